"""Task of rules/vae.smk: tune the VAE, latent statistics, reconstruction metrics."""

from __future__ import annotations

from pathlib import Path

from medsynth.tasks import Job, launch_or_run, task


@task(seed=lambda job: job.params.vae.get("seed"))
def vae(job: Job) -> None:
    """Tune the VAE (2D slices, or volumes for the 3D path), its latent statistics and reconstruction table."""
    from medsynth.generator.stages import run_vae

    cfg = job.params.vae
    launch_or_run(job, cfg, lambda: run_vae(job.input.shards, Path(job.output.final).parent, cfg,
                                            job.output.reconstruction))
