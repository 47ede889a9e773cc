"""Task of rules/sample.smk: one trained model x one sampler run x one condition set."""

from __future__ import annotations

from medsynth.tasks import Job, task


@task(seed=lambda job: job.params.sampling.get("seed"))
def sample(job: Job) -> None:
    """Generate one set: the latents of every condition of the set, decoded, with their index and cost."""
    from medsynth.generator.sampling import sample_condition_set

    sample_condition_set(job.input.shards, job.input.vae, job.input.stats, job.input.model, job.input.get("init"),
                         job.output.tensors, job.output.index, job.output.summary, job.params.generator,
                         job.params.model_cfg, job.params.sampling, job.wildcards.run, job.params.select)
