"""Task of rules/vae.smk: tune the VAE, latent statistics, reconstruction metrics."""

from __future__ import annotations

from pathlib import Path

from medsynth.tasks import Job, task
from medsynth.tasks.launching import launch_or_run


@task(seed=lambda job: job.params.vae.get("seed"))
def vae(job: Job) -> None:
    """Tune the VAE (2D slices, or volumes for the 3D path), its latent statistics and reconstruction table."""
    from medsynth.train.config import TrainOutputs
    from medsynth.vae.stage import VAEOutputs, run_vae

    cfg, out = job.params.vae, job.output
    train = TrainOutputs.declared(out.final, out.curve, out.train_config)
    outputs = VAEOutputs(train, Path(out.stats), Path(out.reconstruction))
    launch_or_run(job, cfg, lambda: run_vae(job.input.shards, outputs, cfg, job.params.statistics))
