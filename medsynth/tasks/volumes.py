"""Tasks of rules/volumes.smk: the 3D path (volume VAE, generator, sampling, metrics, downstream segmentation)."""

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


@task(seed=lambda job: job.params.cfg.get("seed"))
def volume_downstream(job: Job) -> None:
    """MAISI-v2's downstream tumour segmentation, one task x setting: the 3D segmenter trained on the task's real
    training volumes (+ the generated ones for ``real_synth``), scored by the ROI's Dice on its real test volumes."""
    from medsynth.evaluation import run_volume_downstream
    from medsynth.train.config import TrainOutputs

    i, o, p = job.input, job.output, job.params
    setting = str(p.setting)  # the rule's wildcard tumour_setting: real | real_synth
    synthetic = (i.synthetic, i.synthetic_index) if setting == "real_synth" else None
    run_volume_downstream(i.shards, synthetic, job.wildcards.task, p.task_cfg, setting, p.cfg,
                          TrainOutputs.declared(o.final, o.curve, o.train_config), o.evaluation,
                          statistics=p.statistics)
