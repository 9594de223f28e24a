#!/usr/bin/env bash
# Table 4: CRaFT ablations (full, no projection, no dual, anchor raw_only / aq_only).
# The documented name of this driver; run_table4_ablations.sh / .ps1 is the same driver.
# Thin wrapper: all logic (and --help) is in craft_experiments/common_utils/experiments.py, shared with the
# PowerShell twin of this script. Examples:
#   bash craft_experiments/03_ablations/run_ablation_experiments.sh --dry-run
#   CRAFT_SEEDS=7 bash craft_experiments/03_ablations/run_ablation_experiments.sh --suites libero_spatial --gpus_per_run 4
#   bash craft_experiments/03_ablations/run_ablation_experiments.sh --smoke          # whole chain on CPU in minutes
# CRAFT_PYTHON selects the interpreter (default: python).
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export PYTHONPATH="${REPO_ROOT}${PYTHONPATH:+:${PYTHONPATH}}"
exec "${CRAFT_PYTHON:-python}" -m craft_experiments.common_utils.experiments table4 "$@"
