"""Stage 1: the raw labelled images of the source in params `generate` (shapes and digits drawn
as PNGs, a folder's images read and recorded in place), and the data report (counts, skipped
files, the same image in several classes, sizes; a grid of samples). `source` is the check
stage's output, which puts generate after the check."""

from pathlib import Path

from cnnpipe.core import dataset, params, stage
from cnnpipe.core.outputs import atomic_path, write_json
from cnnpipe.core.project import project_root
from cnnpipe.data import folder, report, sources

SHOW_SKIPPED = 20


def main(source: Path, raw: Path, report_file: Path, samples_file: Path) -> None:
    p = params.load().generate
    listing = None
    if p.source == "folder":
        listing = folder.list_folder(p.folder, folder.hash_cache(project_root()))
    with atomic_path(raw) as tmp:
        written = sources.write_raw(p, tmp, listing)
        summary = report.summary(written, p)
        grid = report.sample_grid(dataset.image_folder(tmp), written)
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
    for group in summary["duplicates_across_classes"][:SHOW_SKIPPED]:
        same = " = ".join(group["files"])
        stage.progress(f"generate: the same image in {', '.join(group['classes'])}: {same}")
    if duplicates := len(summary["duplicates_across_classes"]):
        stage.progress(
            f"generate: {duplicates} image(s) in more than one class (identical files), see "
            f"{report_file}; keep each in its one right class"
        )
    stage.progress(
        f"generate: {summary['images']} images in {summary['classes']} classes "
        f"({written.layout}) -> {raw} ({written.counts})"
    )


if __name__ == "__main__":
    stage.run(main)
