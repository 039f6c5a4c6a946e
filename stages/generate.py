"""Stage 1: write the raw labelled images (data/raw) from the source in params `generate`."""

from pathlib import Path

from cnnpipe import params, sources, stage
from cnnpipe.outputs import atomic_path

OUT = Path("data/raw")


def main() -> None:
    p = params.load().generate
    with atomic_path(OUT) as tmp:
        counts = sources.write_raw(p, tmp)
    total = sum(counts.values())
    stage.progress(f"generate: {total} images in {len(counts)} classes -> {OUT} ({counts})")


if __name__ == "__main__":
    stage.run(main)
