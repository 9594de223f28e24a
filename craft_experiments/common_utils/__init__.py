"""Shared pieces of the table drivers.

    experiments.py      the driver CLI (plan -> train -> evaluate -> collect), called by the .sh/.ps1 scripts
    experiment_plan.py  the tables' rows (variants), the run plan and the train/eval commands (pure functions)
    driver_settings.py  every driver setting: flag, environment variable, default, --smoke value
    run_state.py        per-run bookkeeping on disk: markers, failures, locks, fingerprints
    slurm.py            --launcher slurm: job scripts, sbatch/squeue/scontrol, the job-side entry point
    log_parser.py       success rates from evaluation logs / JSONL results; latest checkpoint; table CLI
    tables.py           mean ± std over seeds and Markdown / LaTeX / CSV rendering
    wandb_logs.py       metric histories from W&B (offline .wandb files, the public API) and metrics.jsonl
    plots.py            training curves and success-rate bar charts (matplotlib, PNG)
"""
