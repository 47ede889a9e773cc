"""The ``medsynth`` command line: helpers around the workflow (the workflow itself is ``snakemake``)."""

from __future__ import annotations

import argparse
import sys

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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``medsynth`` command."""
    parser = argparse.ArgumentParser(prog="medsynth", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    datasets = sub.add_parser("datasets", help="list the dataset registry (source kind, licence, access)")
    datasets.add_argument("--registry", default="config/datasets.yaml")
    datasets.add_argument("-v", "--verbose", action="store_true", help="also print licence, access, url, citation")
    datasets.set_defaults(func=_datasets)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
