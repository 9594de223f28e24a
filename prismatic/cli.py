"""Shared entry-point helper for the draccus command-line scripts."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

# What a user can cause and fix (bad flags, data, paths, checkpoints, a diverged run, a full disk): one
# `error: ...` line instead of a traceback, when our code raised it (its message names the problem). Anything
# else (other types, or raised inside a library) is treated as a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError,
               FloatingPointError, OSError)
DEBUG_ENV = "PRISMATIC_TRACEBACK"  # set to 1 to get the traceback of a user error too


def run_cli(main: Callable[[], None]) -> None:
    """Run a `@draccus.wrap()` main.

    - a config that fails its own validation exits with the plain message (`error: --batch_size must be >= 1,
      got 0`) instead of draccus' generic "Couldn't instantiate" trace;
    - a data / resume / path / checkpoint error (USER_ERRORS) exits 1 with `error: <message>`;
    - Ctrl-C exits 130 (a training run first says where its last checkpoint is and how to resume; SIGTERM
      with --save_on_sigterm exits 143 after saving)."""
    import draccus

    try:
        main()
    except draccus.utils.ParsingError as e:
        if isinstance(e.__cause__, ValueError):
            # An error that knows the right command (e.g. upstream's OpenVLA-7B default) prints it too.
            suggest = getattr(e.__cause__, "suggested_command", None)
            sys.exit(f"error: {e.__cause__}" + (f"\n{suggest(sys.argv)}" if suggest else ""))
        raise
    except KeyboardInterrupt as e:
        if not hasattr(e, "exit_code"):  # a TrainingInterrupted has logged its message (rank 0) already
            sys.stderr.write("interrupted\n")
        logging.shutdown()
        sys.exit(getattr(e, "exit_code", 130))
    except USER_ERRORS as e:
        if os.environ.get(DEBUG_ENV) == "1" or not _raised_by_us(e):
            raise
        sys.exit(f"error: {e}")


def _raised_by_us(e: BaseException) -> bool:
    """Whether the exception was raised by this project's code (a deliberate, worded error) rather than inside a
    library, where a ValueError / OSError is more likely a bug that needs its traceback."""
    tb = e.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    path = Path(tb.tb_frame.f_code.co_filename).resolve()
    return any(path.is_relative_to(root) for root in _OUR_CODE)


_REPO = Path(__file__).resolve().parents[1]
_OUR_CODE = tuple(_REPO / d for d in ("prismatic", "vla-scripts", "experiments", "craft_experiments"))
