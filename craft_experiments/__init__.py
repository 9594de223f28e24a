"""craft_experiments: one-shot drivers that reproduce the paper's tables, and the tooling that turns
their outputs (evaluation logs, W&B runs) into tables and plots.

    python -m craft_experiments.common_utils.experiments table1 --help   # the drivers
    python -m craft_experiments.common_utils.log_parser --logs DIR       # tables from evaluation logs
    python -m craft_experiments.common_utils.plots --runs DIR --out DIR   # training curves

This package never imports torch or tensorflow at import time: the drivers only launch subprocesses.
"""
