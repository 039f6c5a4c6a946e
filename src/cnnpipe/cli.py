"""The `cnnpipe` command.

`cnnpipe predict PATH...` classifies image files with a trained model, as the service does
(cnnpipe.predict.command), and writes one row per file.

Exit status: 0 when every file was classified (a label, or "unknown" under the model's
threshold); 1 when some files could not be read (each is a row with its reason, and is listed on
stderr); 2 for bad usage, no image file found, or no model; 130 when interrupted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from cnnpipe.core import processes
from cnnpipe.core.errors import CnnpipeError
from cnnpipe.predict import command, files, results
from cnnpipe.serve.settings import cores

SHOW_UNREADABLE = 20  # unreadable files listed on stderr; the output has every one
UNKNOWN_FOLDER = "unknown"  # of --sort-into, for the images the model does not know


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def parser() -> argparse.ArgumentParser:
    command = argparse.ArgumentParser(prog="cnnpipe", description=__doc__.split("\n\n")[0])
    commands = command.add_subparsers(dest="command", required=True, metavar="COMMAND")
    predict = commands.add_parser(
        "predict",
        help="classify image files, folders or globs with a trained model",
        description="Classify image files with a trained model, as the service does: the "
        'pipeline\'s preprocessing, calibrated probabilities, and no label ("unknown") under '
        "the model's threshold. Writes one row per file: CSV on stdout, or --out.",
        epilog="Exit status: 0 every file classified; 1 some files unreadable (each a row with "
        "its reason, and listed on stderr); 2 bad usage, no image file, or no model.",
    )
    predict.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="image files, folders (their image files, recursively) or glob patterns (quoted; "
        "** spans folders)",
    )
    predict.add_argument(
        "--model",
        help="a model store tag (cnnpipe:<version>) or a checkpoint file (models/model.pt, run "
        "by torch); default: the workspace's packaged model (models/package.json) from the "
        "BentoML store, run by onnxruntime, else models/model.pt",
    )
    predict.add_argument(
        "--top-k", type=_positive, metavar="K", help="the K most probable classes (default: all)"
    )
    predict.add_argument(
        "--out", type=Path, metavar="FILE", help="write the rows to FILE.csv, .json or .parquet"
    )
    predict.add_argument(
        "--sort-into",
        type=Path,
        metavar="DIR",
        help=f"copy each image into DIR/<label>/ (DIR/{UNKNOWN_FOLDER}/ when the model does not "
        "know)",
    )
    predict.add_argument(
        "--link", action="store_true", help="with --sort-into: hard links instead of copies"
    )
    predict.add_argument(
        "--jobs", type=_positive, metavar="N", help="decoding processes (default: one per core)"
    )
    return command


def predict(args: argparse.Namespace) -> int:
    """Run `cnnpipe predict`; returns the exit status."""
    paths = files.find_images(args.paths)
    if not paths:
        suffixes = ", ".join(sorted(files.image_suffixes() & {".png", ".jpg", ".jpeg", ".webp"}))
        raise CnnpipeError(
            f"no image files in {' '.join(args.paths)}; a folder's images are found by their "
            f"suffix ({suffixes}, ...)"
        )
    if args.out is not None:
        results.check_format(args.out)
    if args.link and args.sort_into is None:
        raise CnnpipeError("--link goes with --sort-into DIR")
    jobs = min(args.jobs or cores(), max(1, len(paths) // files.CHUNK))
    with files.decoders(jobs) as pool:  # forked before the model's runtime starts threads
        model = command.open_model(args.model, cores())
        log(f"cnnpipe predict: {len(paths)} files, model {model.name}")
        bar = tqdm(total=len(paths), unit="image", file=sys.stderr, disable=not sys.stderr.isatty())
        with bar:
            rows = list(command.predictions(paths, model, args.top_k, pool, bar.update))
    k = min(args.top_k or len(model.card.classes), len(model.card.classes))
    if args.out is not None:
        results.write(rows, args.out, k)
    else:
        sys.stdout.write(results.csv_text(rows, k))
    unreadable = [row for row in rows if row.prediction is None]
    unknown = [row for row in rows if row.prediction is not None and row.prediction.label is None]
    if args.sort_into is not None:
        folder = UNKNOWN_FOLDER if UNKNOWN_FOLDER not in model.card.classes else "_unknown"
        for row in rows:
            if row.prediction is not None:
                label = row.prediction.label or folder
                files.sort_into(row.path, args.sort_into / label, args.link)
    for row in unreadable[:SHOW_UNREADABLE]:
        log(f"unreadable: {row.path}: {row.error}")
    if len(unreadable) > SHOW_UNREADABLE:
        log(f"... and {len(unreadable) - SHOW_UNREADABLE} more, each a row of the output")
    labelled = len(rows) - len(unknown) - len(unreadable)
    where = f" -> {args.out}" if args.out is not None else ""
    sorted_ = f", sorted into {args.sort_into}" if args.sort_into is not None else ""
    log(
        f"cnnpipe predict: {labelled} labelled, {len(unknown)} unknown, {len(unreadable)} "
        f"unreadable{where}{sorted_}"
    )
    return 1 if unreadable else 0


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    processes.stop_on_sigterm()  # SIGTERM unwinds as Ctrl-C does: no half-written output
    try:
        status = predict(args)
    except CnnpipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    raise SystemExit(status)


if __name__ == "__main__":
    main()
