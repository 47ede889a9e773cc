"""The study: everything the workflow derives from a validated config, without torch or Snakemake.

``rules/common.smk`` makes one :class:`Study` and the rules ask it for paths, model names, the
config section a model was trained with and the inputs of a table, so that what a rule needs is
computed in one tested place and never parsed inline in a rule file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from medsynth.configmerge import variant_config
from medsynth.io.trainsets import both_selections
from medsynth.names import DOWNSTREAM_KINDS, TASK_SEPARATOR, parse_setting, run_pattern
from medsynth.settings import check_frozen_vae
from medsynth.replicates import replicate_names, split_replicate, with_replicate_seed
from medsynth.targets import restrict, target_select
from medsynth.variants import stage2_variant

__all__ = ["Study", "TUMOUR_SET_PREFIX", "VOLUME_MODEL"]

#: the 3D generator's name in table rows and `sampling.steps_model` (its metrics: volumes/metrics/<run>.json)
VOLUME_MODEL = "volumes"
#: the volume condition set of a tumour task's synthetic volumes: ``downstream-<task>``
TUMOUR_SET_PREFIX = "downstream-"


class Study:
    """Names, paths and per-model settings of one study.

    ``config`` is validated against ``config/schema.yaml`` (which fills in every default): the study
    reads it without defaults of its own, so the schema is the one home of each default.
    """

    def __init__(self, config: Mapping[str, Any], basedir: str | os.PathLike = "."):
        self.config = config
        self.basedir = str(basedir)
        self.name = config["study"]
        self.results = f"{config['results_dir']}/{self.name}"
        #: stage-2 variants: named override sets of config `stage2`
        self.variants = list(config["variants"])
        #: stage-2 target tasks (config `targets`): a variant with `target: <name>` is fine-tuned and measured on them
        self.targets = dict(config["targets"])
        #: the variants `snakemake` trains by default; the others when an output asks for them
        self.default_variants = [v for v in config["default_variants"] if v in self.variants]
        #: MedSyn2 architecture ablations: base generators trained from scratch with another backbone
        self.architectures = dict(config["architectures"])
        odd = [n for n in [*self.variants, *self.architectures] if "@" in n]
        if odd:
            raise ValueError(f"variant / architecture names {odd} contain '@', which names replicates (<name>@k)")
        for variant in self.variants:  # a variant whose options exclude each other fails at parse time
            self.stage2_config(variant)
        clash = set(self.architectures) & {"base", "stage1", *self.variants}
        if clash:
            raise ValueError(f"config architectures {sorted(clash)} clash with base / stage1 / variant names")
        if VOLUME_MODEL in {*self.variants, *self.architectures}:
            raise ValueError(f"{VOLUME_MODEL!r} names the 3D generator: rename the variant / architecture")
        #: training seeds per model of a table (config `replicates`); replicate k >= 1 of a variant or
        #: architecture is the model `<name>@k` (medsynth.replicates)
        self.replicates = int(config["replicates"])
        replicated = [*self.variants, *self.architectures]
        self.replicate_models = [r for m in replicated for r in replicate_names(m, self.replicates)[1:]]
        #: generators that can be sampled (replicate 0 of each is the model itself)
        self.models = ["base", "stage1", *self.variants, *self.architectures, *self.replicate_models]
        self.sampling = config["sampling"]
        self.condition_sets = list(self.sampling["condition_sets"])
        self.default_run = self.sampling["default_run"]
        self.volumes = config["volumes"]
        self.downstream = config["downstream"]
        self.metrics = config["metrics"]
        self.tables = config["tables"]
        self.extractor_setting = self.metrics["extractor_setting"]
        # `steps: 0` freezes a pretrained VAE; a frozen random one fails now, not in the VAE job
        check_frozen_vae(config["vae"], "vae")
        check_frozen_vae(self.volumes["vae"], "volumes.vae")

    # -- wildcards ---------------------------------------------------------------------------
    def wildcard_constraints(self, datasets) -> dict[str, str]:
        """Regular expressions of every wildcard of the workflow."""
        def alternatives(names):
            return "|".join(re.escape(n) for n in names) or "(?!)"

        kinds = "|".join(k for k in DOWNSTREAM_KINDS if k not in ("real", "real_aug"))
        return {
            "dataset": "|".join(datasets),
            "shard": r"\d+",
            "variant": alternatives([*self.variants, *self.replicas_of(self.variants)]),
            "arch": alternatives([*self.architectures, *self.replicas_of(self.architectures)]),
            "model": alternatives(self.models),
            "run": run_pattern(),
            "setting": (rf"(({alternatives(self.downstream['tasks'])})\.)?"
                        rf"(real|real_aug|({kinds})-(" + "|".join(re.escape(m) for m in self.models) + "))"),
            "conditions": alternatives([*self.condition_sets, *self.tumour_condition_sets()]),
            "task": alternatives(self.tumour_tasks()),
            "downstream_task": alternatives(self.downstream["tasks"]),
            "reference": alternatives(sorted({r for t in self.downstream["tasks"].values()
                                              for r in t.get("references") or {}})),
            "tumour_setting": "real|real_synth",
        }

    def replicas_of(self, models) -> list[str]:
        """The replicate names (``<model>@k``, k >= 1) of ``models``."""
        return [r for m in models for r in replicate_names(m, self.replicates)[1:]]

    def replicates_of(self, model: str) -> list[str]:
        """Every replicate of ``model`` (itself first): config `replicates` names for a variant or architecture."""
        if model in self.variants or model in self.architectures:
            return replicate_names(model, self.replicates)
        return [model]

    # -- paths -------------------------------------------------------------------------------
    def metrics_json(self, model: str, run: str | None = None) -> str:
        """Metrics file of one sampling run (default: the study's default run); the model ``volumes`` is the 3D
        generator (config `volumes`, default run `volumes.run`)."""
        if model == VOLUME_MODEL:
            return f"{self.results}/volumes/metrics/{run or self.volumes['run']}.json"
        return f"{self.results}/metrics/{model}/{run or self.default_run}.json"

    def replicate_paths(self, path: str) -> list[str]:
        """``path`` and the same file of each other replicate of its model: a metrics file of a model, or the
        evaluation of a downstream setting with synthetic slices of a model; ``[path]`` for any other file."""
        root = re.escape(self.results)
        m = re.fullmatch(rf"{root}/metrics/(?P<model>[^/]+)/(?P<run>[^/]+)\.json", path)
        if m:
            return [self.metrics_json(r, m["run"]) for r in self.replicates_of(m["model"])]
        m = re.fullmatch(rf"{root}/downstream/(?P<kind>[^/-]+)-(?P<model>[^/]+)/evaluation\.json", path)
        if m:
            return [self.downstream_json(f"{m['kind']}-{r}") for r in self.replicates_of(m["model"])]
        return [path]

    def downstream_json(self, setting: str) -> str:
        """Evaluation file of one downstream setting."""
        return f"{self.results}/downstream/{setting}/evaluation.json"

    def samples(self, model: str, run: str, conditions: str, ext: str = "safetensors") -> str:
        """Path of a sampled set."""
        return f"{self.results}/samples/{model}/{run}/{conditions}.{ext}"

    def extractor(self) -> str:
        """The self-trained feature extractor (the segmenter of the extractor setting)."""
        return f"{self.results}/downstream/{self.extractor_setting}/segmenter"

    def volume_metrics_json(self) -> dict[str, str]:
        """Metrics of the 3D generator's default run (MedSyn2 Table 1 rows XY / YZ / ZX), if the study is 3D."""
        if not self.volumes["enabled"]:
            return {}
        return {"volumes": f"{self.results}/volumes/metrics/{self.volumes['run']}.json"}

    # -- what each model was trained with ----------------------------------------------------
    def architecture_backbone(self, name: str) -> dict:
        """`generator.backbone` of architecture `name` (or of a replicate of it): its entry, deep-merged onto
        the one it `extends`."""
        name = split_replicate(name)[0]
        entry = dict(self.architectures[name])
        parent = entry.pop("extends", None)
        if parent is None:
            return entry
        if parent not in self.architectures:
            raise ValueError(f"architectures.{name}.extends = {parent!r} is not an architecture")
        return variant_config(self.architecture_backbone(parent), {name: entry}, name)

    def model_generator(self, model: str) -> dict:
        """`generator` section of a model: an architecture's own backbone, else the study's."""
        if split_replicate(model)[0] in self.architectures:
            return {**self.config["generator"], "backbone": self.architecture_backbone(model)}
        return self.config["generator"]

    def architecture_stage(self, arch: str | None = None) -> dict:
        """Training recipe of the architecture ablations: config `base` with `architecture_training` overrides
        (with the seeds of replicate k for ``arch`` = ``<name>@k``)."""
        stage = {**self.config["base"], **self.config["architecture_training"]}
        return with_replicate_seed(stage, split_replicate(arch)[1]) if arch else stage

    def stage2_config(self, variant: str) -> dict:
        """Config `stage2` with the overrides of ``variant`` merged in, checked for options that exclude each other
        (for a replicate ``<variant>@k``: with replicate k's seeds); a variant with a `target` selects only the
        target's slices."""
        name, k = split_replicate(variant)
        cfg = stage2_variant(self.config["stage2"], self.config["variants"], name)
        if cfg.get("target") is not None:
            where = f"variants.{name}.target"
            cfg["select"] = restrict(cfg["select"], target_select(self.targets, cfg["target"], where))
        return with_replicate_seed(cfg, k)

    def model_target(self, model: str) -> str | None:
        """The stage-2 target of ``model`` (config `stage2.target` of its variant); None for any other model."""
        if split_replicate(model)[0] in self.variants:
            return self.stage2_config(model).get("target")
        return None

    def condition_select(self, model: str, conditions: str) -> dict:
        """Condition set ``conditions`` (config `sampling.condition_sets`) as ``model`` is sampled and measured on
        it: restricted to the model's target's slices, if it has one."""
        return restrict(self.sampling["condition_sets"][conditions], target_select(self.targets,
                                                                                   self.model_target(model)))

    def model_config(self, model: str) -> dict:
        """Config section a model was trained with: `base`, `stage1`, the variant's merged `stage2` or an
        architecture's training recipe."""
        if split_replicate(model)[0] in self.architectures:
            return self.architecture_stage(model)
        if model in ("base", "stage1"):
            return self.config[model]
        return self.stage2_config(model)

    def model_sampling(self, model: str) -> dict:
        """`sampling` settings of a model: the section, with the model's own `sampling` overrides (one-step
        students) and, for a replicate, its own sampling seed."""
        own = self.model_config(model).get("sampling") or {}  # only stage-2 variants have their own
        sampling = {**self.sampling, **own, "hu_range": self.config["intensity"]["ct_hu_range"]}
        return with_replicate_seed(sampling, split_replicate(model)[1], nested=False)  # not the condition sets'

    def stage2_init(self, variant: str) -> str:
        """The model a stage-2 variant starts from (config `stage2.init`: stage1, or base for no_stage1)."""
        init = self.model_config(variant)["init"]
        if init not in ("stage1", "base"):
            raise ValueError(f"variant {variant}: stage2.init must be stage1 or base, got {init!r}")
        return f"{self.results}/{init}/final"

    def model_inputs(self, model: str) -> dict[str, str]:
        """Trained weights of ``model`` (+ the stage-1 model a LoRA variant adapts)."""
        if model in ("base", "stage1"):
            return {"model": f"{self.results}/{model}/final"}
        if split_replicate(model)[0] in self.architectures:
            return {"model": f"{self.results}/architectures/{model}/final"}
        inputs = {"model": f"{self.results}/stage2/{model}/final"}
        if self.model_config(model)["method"] == "lora":
            inputs["init"] = self.stage2_init(model)
        return inputs

    # -- 3D path -----------------------------------------------------------------------------
    def volume_generator_config(self) -> dict:
        """`generator` section of the 3D generator: the study's, with the keys of `volumes.generator` replaced."""
        return {**self.config["generator"], **self.volumes["generator"]}

    def volume_condition_set(self, name: str) -> dict:
        """`volumes.condition_sets.<name>` (default: the slices' condition set of that name without its
        slice-only options)."""
        own = self.volumes["condition_sets"].get(name)  # a volume condition set of its own, if any
        if own is not None:
            return own
        if name in self.tumour_condition_sets():  # a tumour task's training volumes (their masks)
            downstream = self.volumes["downstream"]
            task = downstream["tasks"][name[len(TUMOUR_SET_PREFIX):]]
            return both_selections(downstream["train_select"], task["select"])
        return {k: v for k, v in self.sampling["condition_sets"][name].items()
                if k not in ("stochastic_masks", "inpaint", "edit", "progressive")}

    # -- 3D path: MAISI-v2's downstream tumour study ------------------------------------------
    def study_datasets(self) -> list[str]:
        """Names of the study's datasets (config `datasets`: registry names or inline entries)."""
        return [d if isinstance(d, str) else d["name"] for d in self.config["datasets"]]

    def tumour_tasks(self) -> list[str]:
        """The tumour types of the 3D path's downstream study (config `volumes.downstream.tasks`) whose datasets
        (their `select.dataset`, if any) are in the study: a study without a task's data does not run it."""
        if not self.volumes["enabled"]:
            return []
        ours = set(self.study_datasets())
        return [name for name, task in self.volumes["downstream"]["tasks"].items()
                if "dataset" not in task["select"] or ours & set(task["select"]["dataset"])]

    def tumour_condition_sets(self) -> list[str]:
        """Volume condition sets of the tumour tasks' synthetic volumes (``downstream-<task>``)."""
        return [f"{TUMOUR_SET_PREFIX}{t}" for t in self.tumour_tasks()]

    def tumour_json(self, task: str, setting: str) -> str:
        """Evaluation file of one tumour task's setting (real | real_synth)."""
        return f"{self.results}/volumes/downstream/{task}/{setting}/evaluation.json"

    def tumour_records(self) -> dict[str, str]:
        """Every evaluation of the tumour study, by ``<task>/<setting>``."""
        return {f"{t}/{s}": self.tumour_json(t, s) for t in self.tumour_tasks()
                for s in self.volumes["downstream"]["settings"]}

    def tumour_inputs(self, task: str, setting: str) -> dict[str, str]:
        """Generated volumes a tumour setting trains on besides the real ones (real_synth: the 3D generator's
        `volumes.run` on the task's training masks)."""
        if setting != "real_synth":
            return {}
        stem = f"{self.results}/volumes/samples/{self.volumes['run']}/{TUMOUR_SET_PREFIX}{task}"
        return {"synthetic": f"{stem}.safetensors", "synthetic_index": f"{stem}.csv"}

    # -- downstream --------------------------------------------------------------------------
    def downstream_settings(self, *kinds: str, task: str | None = None) -> list[str]:
        """The study's downstream settings, or those of the given kinds (``real_synth`` of ``real_synth-victr``);
        with ``task``, that task's (``downstream.tasks.<task>.settings``, named ``<task>.<setting>``)."""
        if task is None:
            settings = list(self.downstream["settings"])
        elif task in self.downstream["tasks"]:
            settings = [f"{task}{TASK_SEPARATOR}{s}" for s in self.downstream["tasks"][task]["settings"]]
        else:
            raise ValueError(f"no downstream task {task!r} (downstream.tasks: {sorted(self.downstream['tasks'])})")
        return [s for s in settings if not kinds or parse_setting(s)[1] in kinds]

    def reference_configs(self, task: str | None) -> dict[str, dict]:
        """Task ``task``'s pretrained reference segmenters (``downstream.tasks.<task>.references``; none for
        ``None`` or a task the study does not have)."""
        return dict((self.downstream["tasks"].get(task) or {}).get("references") or {}) if task is not None else {}

    def downstream_references(self, task: str | None) -> dict[str, str]:
        """Reference name -> evaluation file of task ``task``'s reference segmenters (rule ``downstream_reference``)."""
        return {name: f"{self.results}/downstream_reference/{task}/{name}.json"
                for name in self.reference_configs(task)}

    def downstream_reference_json(self, reference: str) -> str:
        """Evaluation file of reference ``<task>.<name>``; empty where the study has no such reference."""
        task, _, name = reference.rpartition(TASK_SEPARATOR)
        return self.downstream_references(task).get(name, "")

    def every_downstream_setting(self) -> list[str]:
        """The plain settings and every task's (``<task>.<setting>``)."""
        tasks = self.downstream["tasks"]
        return [*self.downstream_settings(), *(s for t in tasks for s in self.downstream_settings(task=t))]

    def downstream_inputs(self, setting: str) -> dict[str, str]:
        """Synthetic slices a downstream setting needs: <kind>-<model> -> that model's default run on `train`
        (MedDiff-FT kinds: on the stochastic-mask condition set - the filter also needs the feature
        extractor - or, for real_synth_gm, on the guiding-mask condition set)."""
        _, kind, model = parse_setting(setting)
        if not model:
            return {}
        meddiff = self.downstream["meddiff"]
        if kind == "real_synth_gm":
            return {"synthetic": self.samples(model, self.default_run,
                                              meddiff["inpaint_condition_set"])}
        if kind in ("real_synth_mg", "real_synth_mgf"):
            inputs = {"synthetic": self.samples(model, self.default_run,
                                                meddiff["condition_set"])}
            if kind == "real_synth_mgf":
                inputs["extractor"] = self.extractor()
            return inputs
        return {"synthetic": self.samples(model, self.default_run, "train")}

    # -- resources ---------------------------------------------------------------------------
    def train_threads(self, section: str) -> int:
        """Threads of a training rule (config ``<section>.threads``, default 1)."""
        return int(self.config[section]["threads"]) or 1

    # -- report ------------------------------------------------------------------------------
    def steps_model(self) -> str:
        """The model whose sampler sweep is MAISI's steps ablation (config `sampling.steps_model`)."""
        return self.sampling["steps_model"]

    def grid_runs(self) -> list[tuple[str, str]]:
        """(model, run) pairs of the sample grid: each default variant with the default run, then ViCTr's samplers;
        only the models of the first default variant's target (one grid shows one set of real conditions)."""
        steps_runs = self.sampling["steps_runs"]
        steps_model = [] if self.steps_model() == VOLUME_MODEL else [self.steps_model()]  # the grid shows slices
        runs = list(dict.fromkeys([(v, self.default_run) for v in self.default_variants]
                                  + [(m, r) for m in steps_model for r in ("tweedie-2", "dopri5-auto")
                                     if r in steps_runs]))
        target = self.model_target(runs[0][0]) if runs else None
        return [(m, r) for m, r in runs if self.model_target(m) == target]

    def grid_select(self) -> dict:
        """The real conditions of the sample grid: the `eval` set of the grid's models."""
        runs = self.grid_runs()
        return self.condition_select(runs[0][0], "eval") if runs else dict(self.sampling["condition_sets"]["eval"])

    def loss_curves(self) -> dict[str, str]:
        """Loss curve of each training the report plots, by label."""
        r = self.results
        return {
            "vae": f"{r}/vae/loss_curve.csv",
            "base": f"{r}/base/loss_curve.csv",
            "stage1": f"{r}/stage1/loss_curve.csv",
            **{f"stage2 {v}": f"{r}/stage2/{v}/loss_curve.csv" for v in self.default_variants},
            f"downstream {self.extractor_setting}": f"{r}/downstream/{self.extractor_setting}/loss_curve.csv",
        }
