"""Shared entry-point helper for the draccus command-line scripts."""

from __future__ import annotations

import sys
from collections.abc import Callable


def run_cli(main: Callable[[], None]) -> None:
    """Run a `@draccus.wrap()` main; a config that fails its own validation exits with the plain message
    (`error: --batch_size must be >= 1, got 0`) instead of draccus' generic "Couldn't instantiate" trace."""
    import draccus

    try:
        main()
    except draccus.utils.ParsingError as e:
        if isinstance(e.__cause__, ValueError):
            sys.exit(f"error: {e.__cause__}")
        raise
