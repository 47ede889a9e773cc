#!/usr/bin/env bash
# Set up the project's virtual environment (.venv) with the pinned stack.
# Idempotent: a second run with unchanged pins only checks and exits in seconds.
#   PYTHON=python3.11 ./install.sh        choose the interpreter (default: python3.11, else python3)
#   MEDSYNTH_VENV=/path/to/venv ./install.sh   put the venv elsewhere
# It also links profiles/local and profiles/slurm into snakemake's user config folder
# ($XDG_CONFIG_HOME/snakemake, default ~/.config/snakemake), so `--profile slurm` works as a name.
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
VENV=${MEDSYNTH_VENV:-.venv}
"$PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "medsynth needs Python 3.11 (got %s)" % sys.version.split()[0])'

want=$(cat requirements/torch.txt requirements/lock.txt pyproject.toml | sha256sum | cut -d' ' -f1)
stamp="$VENV/.medsynth-install.sha256"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VENV/bin/python" -I -c 'import medsynth' 2>/dev/null; then  # -I: not from the current folder
  echo "install.sh: $VENV is up to date"
  "$VENV/bin/medsynth" profiles   # `snakemake --profile slurm` / `--profile local` from any folder
  exit 0
fi

start=$(date +%s)
# torch 2.14.1 on x86_64 is a CUDA build: ~7.7 GB in the venv (measured). Where the machine's local wheel
# store is absent pip downloads it from PyPI, so no download cache: it would hold a second copy.
free_kb=$(df -Pk "$(dirname "$VENV")" | awk 'NR==2 {print $4}')
[ "${free_kb:-0}" -ge 9000000 ] || echo "install.sh: warning: $((free_kb / 1024 / 1024)) GB free where $VENV goes; the pinned stack needs about 8 GB" >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check --no-cache-dir)
"${pip[@]}" install -q "pip==24.3.1"
# torch first, then everything else constrained to it (torch-fidelity would otherwise upgrade it)
"${pip[@]}" install -q -r requirements/torch.txt
"${pip[@]}" install -q -c requirements/torch.txt -r requirements/lock.txt
"${pip[@]}" install -q --no-deps --no-build-isolation -e .
"${pip[@]}" check
echo "$want" > "$stamp"
"$VENV/bin/medsynth" profiles   # `snakemake --profile slurm` / `--profile local` from any folder
echo "install.sh: installed into $VENV in $(( $(date +%s) - start )) s"
