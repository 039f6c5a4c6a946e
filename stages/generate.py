"""Stage 1: write the raw labelled images (data/raw) from the source in params `generate`, and
the data report (metrics/generate: report.json, samples.png)."""

from pathlib import Path

from cnnpipe import datareport, params, sources, stage
from cnnpipe.outputs import atomic_path, write_json

OUT, REPORT = Path("data/raw"), Path("metrics/generate")
SHOW_SKIPPED = 20


def main() -> None:
    p = params.load().generate
    with atomic_path(OUT) as tmp, atomic_path(REPORT) as report:
        raw = sources.write_raw(p, tmp)
        report.mkdir()
        summary = datareport.summary(raw, p)
        write_json(report / "report.json", summary)
        datareport.sample_grid(tmp, raw).save(report / "samples.png", optimize=True)
    for skipped in raw.skipped[:SHOW_SKIPPED]:
        stage.progress(f"generate: skipped {skipped.path}: {skipped.reason}")
    if raw.skipped:
        more = len(raw.skipped) - SHOW_SKIPPED
        listed = f" ({more} more not shown)" if more > 0 else ""
        stage.progress(f"generate: {len(raw.skipped)} file(s) skipped{listed}, see {REPORT}")
    stage.progress(
        f"generate: {summary['images']} images in {summary['classes']} classes -> {OUT} "
        f"({raw.counts})"
    )


if __name__ == "__main__":
    stage.run(main)
