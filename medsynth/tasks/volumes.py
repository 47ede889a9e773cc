"""Tasks of rules/volumes.smk: the 3D path (volume VAE, generator, sampling, metrics)."""

from __future__ import annotations

from medsynth.tasks import Job, task
from medsynth.tasks.generator import base
from medsynth.tasks.sample import sample
from medsynth.tasks.vae import vae

#: the volume VAE, generator and sampler are the 2D tasks on volume shards with the `volumes` settings
volume_vae = vae
volume_generator = base
volume_sample = sample


@task()
def volume_metrics(job: Job) -> None:
    """MedSyn2 Table 1 / MAISI 2.5D: FD per CT window x plane; SSIM / PSNR; mask fidelity."""
    from medsynth.evaluation import RunFiles, RunSettings, evaluate_volume_run

    i, p = job.input, job.params
    files = RunFiles(i.generated, i.index, i.summary, i.shards, i.extractor)
    evaluate_volume_run(files, job.output[0], RunSettings(p.metrics, p.intensity, p.select, grid=p.grid), "volumes",
                        job.wildcards.run)
