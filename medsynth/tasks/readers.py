"""Tasks of rules/readers.smk: the blinded reader-study kit and the scoring of the readers' answers."""

from __future__ import annotations

from medsynth.tasks import Job, task


@task(seed=lambda job: job.params.readers["seed"])
def reader_kit(job: Job) -> None:
    """Draw the real and synthetic cases, write the kit folder readers get and the key kept apart."""
    from medsynth.readers.kit import build_kit

    p = job.params
    build_kit(job.input.shards, job.input.generated, job.input.index, p.readers, p.intensity, p.model, p.run,
              job.output.kit, job.output.key)


@task()
def reader_scores(job: Job) -> None:
    """Score the answer files against the key: Visual Turing, match (overall and per pathology) and agreement tables."""
    from medsynth.readers.scores import score_answers

    out = job.output
    score_answers(list(job.input.answers), job.input.key,
                  {"visual_turing": (out.turing, out.turing_md), "match": (out.match, out.match_md),
                   "match_by_pathology": (out.match_by_pathology, out.match_by_pathology_md),
                   "agreement": (out.agreement, out.agreement_md)},
                  float(job.params.readers["level"]), job.params.answers)
