"""What every stage script shares: its paths from the command line, one-line errors instead of
tracebacks, and progress output."""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Callable
from pathlib import Path

from cnnpipe.core.errors import CnnpipeError


def run(main: Callable[..., None]) -> None:
    """Run a stage's main() with the paths dvc.yaml gives on its command line (one positional
    argument per parameter of main, in order); bad input ends it with one line on stderr and
    exit status 2."""
    parser = argparse.ArgumentParser(description=sys.modules[main.__module__].__doc__)
    for name in inspect.signature(main).parameters:
        parser.add_argument(name, type=Path)
    paths = vars(parser.parse_args())
    try:
        main(**paths)
    except CnnpipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def progress(message: str) -> None:
    """One line of progress, flushed at once so DVC shows it as it happens."""
    print(message, flush=True)
