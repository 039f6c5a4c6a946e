"""Stage 1: write the raw labelled images from the source in params `generate`, and the data
report (counts, skipped files, sizes; a grid of samples)."""

from pathlib import Path

from cnnpipe.core import params, stage
from cnnpipe.core.outputs import atomic_path, write_json
from cnnpipe.data import report, sources

SHOW_SKIPPED = 20


def main(raw: Path, report_file: Path, samples_file: Path) -> None:
    p = params.load().generate
    with atomic_path(raw) as tmp:
        written = sources.write_raw(p, tmp)
        summary = report.summary(written, p)
        grid = report.sample_grid(tmp, written)
    write_json(report_file, summary)
    with atomic_path(samples_file) as tmp:
        grid.save(tmp, format="PNG", optimize=True)
    for skipped in written.skipped[:SHOW_SKIPPED]:
        stage.progress(f"generate: skipped {skipped.path}: {skipped.reason}")
    if written.skipped:
        more = len(written.skipped) - SHOW_SKIPPED
        listed = f" ({more} more not shown)" if more > 0 else ""
        stage.progress(
            f"generate: {len(written.skipped)} file(s) skipped{listed}, see {report_file}"
        )
    stage.progress(
        f"generate: {summary['images']} images in {summary['classes']} classes -> {raw} "
        f"({written.counts})"
    )


if __name__ == "__main__":
    stage.run(main)
