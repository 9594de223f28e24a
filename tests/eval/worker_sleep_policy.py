"""An in-worker "policy" module whose import blocks for 10 minutes, as a long episode would.

Only ever imported inside a spawned simulator worker (tests/eval/test_robustness.py): it keeps the worker
busy, away from its pipe, while the test kills the evaluator. Not collected by pytest (no test_ prefix).
"""

import time

time.sleep(600)


def make(env, seed):  # pragma: no cover - never reached
    raise AssertionError("unreachable")
