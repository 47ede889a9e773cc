# Stage 10: the reader study (ViCTr's Visual Turing test, MedSyn2 Tables 4 and 8). No pipeline can run a
# radiologist: reader_kit draws a blinded, randomised set of real and synthetic held-out slices into an
# offline web page (hand out readers/kit/ only; the key stays in readers/key.csv) and reader_scores scores
# the answer files the readers return (readers/answers/*.csv, config readers.answers).

import glob

from medsynth.readers.settings import answers_folder, kit_source

READERS = config["readers"]
READER_MODEL, READER_RUN = kit_source(READERS, MODELS, DEFAULT_VARIANTS, DEFAULT_RUN)
READER_ANSWERS = answers_folder(READERS, RESULTS)


rule reader_kit:
    """Blinded real + synthetic cases on an offline page (readers/kit/) and the key kept apart."""
    input:
        generated=samples(READER_MODEL, READER_RUN, READERS["conditions"]),
        index=samples(READER_MODEL, READER_RUN, READERS["conditions"], "csv"),
        shards=slice_shards,
    output:
        kit=directory(f"{RESULTS}/readers/kit"),
        key=f"{RESULTS}/readers/key.csv",
    log:
        f"{RESULTS}/logs/readers/reader_kit.log",
    conda:
        "../envs/train.yaml"
    threads: 1
    resources:
        **rule_resources("reader_kit", mem_mb=2000),
    params:
        readers=READERS,
        model=READER_MODEL,
        run=READER_RUN,
        intensity=config["intensity"],
    script:
        "../scripts/reader_kit.py"


rule reader_scores:
    """Visual Turing accuracy, match counts (overall, per pathology) and Cohen's kappa of the answer files."""
    input:
        key=f"{RESULTS}/readers/key.csv",
        # the answer files returned so far (none: the tables say so)
        answers=lambda wc: sorted(glob.glob(os.path.join(READER_ANSWERS, "*.csv"))),
    output:
        turing=f"{RESULTS}/readers/scores/visual_turing.csv",
        turing_md=f"{RESULTS}/readers/scores/visual_turing.md",
        match=f"{RESULTS}/readers/scores/match.csv",
        match_md=f"{RESULTS}/readers/scores/match.md",
        # MedSyn2 Table 8: per pathology (a kit drawn with readers.pathologies; else the table says so)
        match_by_pathology=f"{RESULTS}/readers/scores/match_by_pathology.csv",
        match_by_pathology_md=f"{RESULTS}/readers/scores/match_by_pathology.md",
        agreement=f"{RESULTS}/readers/scores/agreement.csv",
        agreement_md=f"{RESULTS}/readers/scores/agreement.md",
    log:
        f"{RESULTS}/logs/readers/reader_scores.log",
    localrule: True
    conda:
        "../envs/train.yaml"
    params:
        readers=READERS,
        answers=READER_ANSWERS,
    script:
        "../scripts/reader_scores.py"
