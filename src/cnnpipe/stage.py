"""What every stage script shares: one-line errors instead of tracebacks, and progress output."""

from __future__ import annotations

import sys
from collections.abc import Callable

from cnnpipe.errors import CnnpipeError


def run(main: Callable[[], None]) -> None:
    """Run a stage's main(); bad input ends it with one line on stderr and exit status 2."""
    try:
        main()
    except CnnpipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def progress(message: str) -> None:
    """One line of progress, flushed at once so DVC shows it as it happens."""
    print(message, flush=True)
