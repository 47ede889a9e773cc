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


rule claims:
    """The claims table (the same task as rule table), first in the report: does each headline claim hold?"""
    input:
        unpack(lambda wildcards: TABLE_SPECS["claims"].inputs(S)),
    output:
        csv=report(
            f"{RESULTS}/tables/claims.csv",
            caption="../report/claims.rst",
            category="Claims",
            labels={"table": "claims", "format": "csv"},
        ),
        md=f"{RESULTS}/tables/claims.md",
    log:
        f"{RESULTS}/logs/tables/claims.log",
    localrule: True
    conda:
        "../envs/data.yaml"
    params:
        table="claims",
        settings=table_params("claims", S),
    script:
        "../scripts/table.py"


ruleorder: claims > table
