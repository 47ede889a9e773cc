"""The ``medsynth`` command line: helpers around the workflow (the workflow itself is ``snakemake``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medsynth.data.registry import load_registry


def _datasets(args: argparse.Namespace) -> int:
    registry = load_registry(args.registry)
    for name, entry in registry.items():
        print(f"{name:24s} {entry.get('kind', '?'):12s} {entry.get('title', '')}")
        if args.verbose:
            for key in ("licence", "access", "url", "citation"):
                if entry.get(key):
                    print(f"{'':24s} {key}: {entry[key]}")
    return 0


def _models(args: argparse.Namespace) -> int:
    from medsynth.weights import inventory_path, load_models

    for name, entry in load_models(args.registry).items():
        here = "fetched" if inventory_path(args.weights_dir, name).is_file() else "absent"
        print(f"{name:24s} {entry['access']:7s} {entry.get('size_gb', '?'):>6} GB  {here:8s} {entry['title']}")
        if args.verbose:
            print(f"{'':24s} licence: {entry['licence']}")
            for use in entry.get("used_by", []):
                print(f"{'':24s} used by: {use}")
            print(f"{'':24s} fetch: snakemake --cores 1 {inventory_path(args.weights_dir, name)}")
    return 0


def _envs(args: argparse.Namespace) -> int:
    from medsynth import envs

    if args.write:
        for path in envs.write(args.env_dir, args.lock):
            print(f"wrote {path}")
        return 0
    stale = envs.check(args.env_dir, args.lock)
    for family in stale:
        print(f"{args.env_dir}/{family}.yaml disagrees with {args.lock}; run `medsynth envs --write`")
    unmet = envs.unmet_imports(Path(args.env_dir).resolve().parent, args.lock)
    for family, dists in unmet.items():
        for dist, rules in dists.items():
            print(f"{args.env_dir}/{family}.yaml lacks {dist}, imported by rules {', '.join(rules)}: add it to "
                  f"medsynth.envs.FAMILIES[{family!r}] and run `medsynth envs --write`")
    return 1 if stale or unmet else 0


def _profiles(args: argparse.Namespace) -> int:
    from medsynth.profiles import install_profiles

    for line in install_profiles(Path(__file__).resolve().parents[1], args.target):
        print(line)
    return 0


def _audit(args: argparse.Namespace) -> int:
    from medsynth.provenance import audit

    tree = audit(args.file, check_code=not args.ignore_code)
    print(tree.render())
    problems = tree.all_problems()
    if problems:
        print(f"\nAUDIT FAILED: {len(problems)} problem(s)", file=sys.stderr)
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        return 1
    print("\naudit passed: every checksum verified back to raw data")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``medsynth`` command."""
    parser = argparse.ArgumentParser(prog="medsynth", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    datasets = sub.add_parser("datasets", help="list the dataset registry (source kind, licence, access)")
    datasets.add_argument("--registry", default="config/datasets.yaml")
    datasets.add_argument("-v", "--verbose", action="store_true", help="also print licence, access, url, citation")
    datasets.set_defaults(func=_datasets)
    models = sub.add_parser("models", help="list the model registry (access, size, whether fetched, licence)")
    models.add_argument("--registry", default="config/models.yaml")
    models.add_argument("--weights-dir", default="resources/weights", help="config key weights_dir")
    models.add_argument("-v", "--verbose", action="store_true", help="also print licence, users, fetch command")
    models.set_defaults(func=_models)
    env = sub.add_parser("envs", help="check (default) or regenerate envs/*.yaml from requirements/lock.txt")
    env.add_argument("--write", action="store_true", help="regenerate the env files")
    env.add_argument("--env-dir", default="envs")
    env.add_argument("--lock", default="requirements/lock.txt")
    env.set_defaults(func=_envs)
    prof = sub.add_parser("profiles", help="link profiles/local and profiles/slurm where `snakemake --profile <name>` "
                                           "finds them (install.sh does)")
    prof.add_argument("--target", default=None, help="default: snakemake's user config folder "
                                                     "($XDG_CONFIG_HOME/snakemake or ~/.config/snakemake)")
    prof.set_defaults(func=_profiles)
    aud = sub.add_parser("audit", help="print a result's lineage back to raw data and verify every checksum")
    aud.add_argument("file", help="an output of the pipeline (it has a <file>.prov.json sidecar)")
    aud.add_argument("--ignore-code", action="store_true", help="do not flag results made by other code")
    aud.set_defaults(func=_audit)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
