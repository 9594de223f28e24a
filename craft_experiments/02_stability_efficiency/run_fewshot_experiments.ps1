# Table 2: few-shot (5 and 10 demonstrations per task), baseline vs CRaFT.
# The documented name of this driver; run_table2_fewshot.sh / .ps1 is the same driver.
# Thin wrapper: all logic (and --help) is in craft_experiments/common_utils/experiments.py, shared with the
# bash twin of this script. Examples:
#   .\craft_experiments\02_stability_efficiency\run_fewshot_experiments.ps1 --dry-run
#   $env:CRAFT_SEEDS = "7"; .\craft_experiments\02_stability_efficiency\run_fewshot_experiments.ps1 --suites libero_spatial
#   .\craft_experiments\02_stability_efficiency\run_fewshot_experiments.ps1 --smoke         # whole chain on CPU in minutes
# CRAFT_PYTHON selects the interpreter (default: python).
$ErrorActionPreference = "Stop"
$RepoRoot = (Resolve-Path (Join-Path $PSScriptRoot "..\..")).Path
if ($env:PYTHONPATH) { $env:PYTHONPATH = "$RepoRoot$([IO.Path]::PathSeparator)$env:PYTHONPATH" } else { $env:PYTHONPATH = $RepoRoot }
$Python = if ($env:CRAFT_PYTHON) { $env:CRAFT_PYTHON } else { "python" }
& $Python -m craft_experiments.common_utils.experiments table2 @args
exit $LASTEXITCODE
