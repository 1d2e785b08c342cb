#!/usr/bin/env bash
# Snakemake runs this inside envs/pipeline.yaml's environment right after creating it (both
# from the YAML and from envs/pipeline.linux-64.pin.txt, which holds only the conda layer).
# It installs this package with pyproject.toml's pinned dependencies (the YAML's pip list), so
# `subspace-fsl` is on the PATH of every job. Snakemake runs it from the working directory:
# start snakemake in the repository, or set SUBSPACE_FSL_SOURCE to the checkout.
set -euo pipefail
src=${SUBSPACE_FSL_SOURCE:-$PWD}
if [[ ! -f $src/pyproject.toml ]]; then
  echo "envs/pipeline.post-deploy.sh: no pyproject.toml in $src; set SUBSPACE_FSL_SOURCE" >&2
  exit 2
fi
python -m pip install --no-input -e "$src"
