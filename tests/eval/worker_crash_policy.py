"""An in-worker "policy" module whose import hard-kills the process, as a renderer segfault would.

Only ever imported inside a spawned simulator worker (tests/eval/test_sim_eval.py); never import it
anywhere else. Its name does not start with test_, so pytest does not collect it.
"""

import os

os._exit(3)


def make(env, seed):  # pragma: no cover - never reached
    raise AssertionError("unreachable")
