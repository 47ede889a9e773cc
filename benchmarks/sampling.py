"""Sampler cost vs quality on one trained model, measured side by side in one run.

For one trained generator of a study (default: the embedded study's ``victr``), samples the held-out
``eval`` condition set with 50-step Euler, adaptive Dormand-Prince (torchdiffeq) and the Tweedie
few-step sampler (<= 4 NFE), from the same noise, and prints for each: NFE, wall seconds, seconds
per sample and the Frechet distance to the real slices on the study's self-trained encoder; then the
ratios between them. Needs the study's trained outputs::

    .venv/bin/snakemake --cores 2 results/example/stage2/victr/final results/example/downstream/real/segmenter
    .venv/bin/python benchmarks/sampling.py [--model victr] [--tweedie-steps 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "config" / "config.yaml"))
    parser.add_argument("--model", default="victr", help="stage-2 variant (or base / stage1)")
    parser.add_argument("--euler-steps", type=int, default=50)
    parser.add_argument("--tweedie-steps", type=int, default=2, help="<= 4")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not 1 <= args.tweedie_steps <= 4:
        parser.error("--tweedie-steps must be 1..4 (the few-step sampler)")
    torch.set_num_threads(args.threads)

    from medsynth.downstream import load_segmenter
    from medsynth.evaluation import SELF_EXTRACTOR, SegmenterEncoder
    from medsynth.generator.data import load_slices, select_rows
    from medsynth.generator.integrate import SamplingSpec, generate, load_trained_generator
    from medsynth.generator.loaders import load_latent_data, load_vae
    from medsynth.configmerge import variant_config
    from medsynth.metrics import frechet_metrics, register_module_extractor

    config = yaml.safe_load(Path(args.config).read_text())
    results = REPO / config.get("results_dir", "results") / config["study"]
    shards = sorted(str(p) for p in (results / "trainsets" / "slices").glob("shard-*.*") if p.suffix in (".safetensors", ".csv"))
    if args.model in ("base", "stage1"):
        model_dir, model_cfg = results / args.model / "final", config[args.model]
    else:
        model_dir, model_cfg = results / "stage2" / args.model / "final", variant_config(
            config["stage2"], config["variants"], args.model)
    segmenter_dir = results / "downstream" / (config.get("metrics") or {}).get("extractor_setting", "real") / "segmenter"
    missing = [p for p in (model_dir, segmenter_dir, results / "vae" / "final") if not p.exists()] + ([] if shards else ["training sets"])
    if missing:
        print(f"missing {', '.join(map(str, missing))}: run\n  .venv/bin/snakemake --cores 2 {model_dir} {segmenter_dir}",
              file=sys.stderr)
        return 2
    sampling = config.get("sampling") or {}
    select = sampling["condition_sets"]["eval"]
    vae, stats = load_vae(results / "vae" / "final", results / "vae" / "latent_stats.json")
    data = load_latent_data(shards, results / "vae" / "final", results / "vae" / "latent_stats.json", config["generator"],
                 {**model_cfg, "select": select}, None)
    model = load_trained_generator(config["generator"], model_dir, results / "stage1" / "final")
    index, images, _, _ = load_slices(shards)
    real = torch.from_numpy((images[select_rows(index, select)] + 1.0) / 2.0)
    extractor = register_module_extractor(SELF_EXTRACTOR, SegmenterEncoder(load_segmenter(segmenter_dir)))
    objective = str(model_cfg.get("objective", "flow"))

    runs = {f"euler-{args.euler_steps}": f"euler-{args.euler_steps}", "dopri5": "dopri5-auto",
            f"tweedie-{args.tweedie_steps}": f"tweedie-{args.tweedie_steps}"}
    rows = {}
    for label, run in runs.items():
        generate(model, objective, data, vae, stats, SamplingSpec.from_config(sampling, "euler-1"))  # warm-up
        out = generate(model, objective, data, vae, stats, SamplingSpec.from_config(sampling, run))
        fd = frechet_metrics(real, torch.from_numpy((out.images + 1.0) / 2.0), extractor, kid=False)["fd"]
        rows[label] = {"nfe": out.nfe, "seconds": out.seconds, "s/sample": out.seconds_per_sample, "fd": fd}

    n = len(real)
    print(f"model {args.model} ({objective}), {n} held-out conditions, guidance {sampling.get('guidance_scale', 1.0)}, "
          f"{args.threads} thread(s); FD on the self-trained encoder ({segmenter_dir})")
    print(f"{'sampler':<12}{'NFE':>6}{'seconds':>10}{'s/sample':>11}{'FD':>10}")
    for label, r in rows.items():
        print(f"{label:<12}{r['nfe']:>6}{r['seconds']:>10.3f}{r['s/sample']:>11.5f}{r['fd']:>10.5f}")
    names = list(rows)
    print("ratios (row / column): seconds | FD")
    for a in names:
        cells = [f"{rows[a]['seconds'] / rows[b]['seconds']:.2f} | {rows[a]['fd'] / rows[b]['fd']:.2f}"
                 for b in names]
        print(f"  {a:<12}" + "  ".join(f"{b}: {c}" for b, c in zip(names, cells)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
