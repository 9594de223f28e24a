#!/usr/bin/env bash
# Table 2: few-shot (5 and 10 demonstrations per task), baseline vs CRaFT.
# The documented name of this driver; run_table2_fewshot.sh / .ps1 is the same driver.
# Thin wrapper: all logic (and --help) is in craft_experiments/common_utils/experiments.py, shared with the
# PowerShell twin of this script. Examples:
#   bash craft_experiments/02_stability_efficiency/run_fewshot_experiments.sh --dry-run
#   CRAFT_SEEDS=7 bash craft_experiments/02_stability_efficiency/run_fewshot_experiments.sh --suites libero_spatial --gpus_per_run 4
#   bash craft_experiments/02_stability_efficiency/run_fewshot_experiments.sh --smoke          # whole chain on CPU in minutes
# CRAFT_PYTHON selects the interpreter (default: python).
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export PYTHONPATH="${REPO_ROOT}${PYTHONPATH:+:${PYTHONPATH}}"
exec "${CRAFT_PYTHON:-python}" -m craft_experiments.common_utils.experiments table2 "$@"
