# Stage 8: the papers' tables. One rule over the table's name; each table is registered once in
# medsynth/tables/registry.py (title, notes, inputs, builder). Asking for one table file runs exactly
# what that table needs. Published values come from config/paper_reported.


rule table:
    """One paper table (CSV + Markdown) from the metrics / evaluation files its registry entry names."""
    input:
        unpack(table_inputs),
    output:
        csv=report(
            f"{RESULTS}/tables/{{table}}.csv",
            caption="../report/tables.rst",
            category="Tables",
            labels={"table": "{table}", "format": "csv"},
        ),
        md=f"{RESULTS}/tables/{{table}}.md",
    log:
        f"{RESULTS}/logs/tables/{{table}}.log",
    localrule: True
    conda:
        "../envs/data.yaml"
    params:
        table=lambda wc: wc.table,
        settings=table_settings,
    script:
        "../scripts/table.py"


rule headline_table:
    """The claims and calibration tables (the same task as rule table), the first section of the report."""
    input:
        unpack(table_inputs),
    output:
        csv=report(
            f"{RESULTS}/tables/{{table}}.csv",
            caption="../report/headline.rst",
            category="Claims and calibration",
            labels={"table": "{table}", "format": "csv"},
        ),
        md=f"{RESULTS}/tables/{{table}}.md",
    log:
        f"{RESULTS}/logs/tables/{{table}}.log",
    wildcard_constraints:
        table="|".join(HEADLINE_TABLES),
    localrule: True
    conda:
        "../envs/data.yaml"
    params:
        table=lambda wc: wc.table,
        settings=table_settings,
    script:
        "../scripts/headline_table.py"


ruleorder: headline_table > table
