"""What every stage script shares: its paths from the command line, one-line errors instead of
tracebacks, a clean stop on SIGTERM and on the death of the process that started it, and progress
output."""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path

from cnnpipe.core import processes
from cnnpipe.core.errors import CnnpipeError
from cnnpipe.core.redact import printable


def run(main: Callable[..., None]) -> None:
    """Run a stage's main() with the paths dvc.yaml gives on its command line (one positional
    argument per parameter of main, in order); bad input ends it with one line on stderr and
    exit status 2, SIGTERM (also sent when the process that started it dies) with status 143.
    Once main() has returned, the process ends at once with status 0."""
    if processes.tied_to_parent():
        processes.die_with_parent()
    processes.stop_on_sigterm()
    parser = argparse.ArgumentParser(description=sys.modules[main.__module__].__doc__)
    for name in inspect.signature(main).parameters:
        parser.add_argument(name, type=Path)
    paths = vars(parser.parse_args())
    try:
        main(**paths)
    except CnnpipeError as exc:
        print(f"error: {printable(str(exc))}", file=sys.stderr)
        raise SystemExit(2) from None
    except processes.Terminated as exc:
        print(f"error: {Path(sys.argv[0]).stem} {exc}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        # The cleanup ran while unwinding; the interpreter's own teardown can block for long in
        # torch.distributed once a peer has gone, and a stopped stage must be gone at once.
        os._exit(143)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    # Every output is renamed into place, every store written, every worker joined: the
    # interpreter's teardown of torch, MLflow, BentoML and the rest (a second or more of CPU
    # per stage) would do nothing the stage needs.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def progress(message: str) -> None:
    """One line of progress, flushed at once so DVC shows it as it happens. It may name files
    and classes of the user's folder: whatever they hold, it stays one line."""
    print(printable(message), flush=True)
