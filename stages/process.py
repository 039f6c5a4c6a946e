"""Stage 2: split data/raw into train/val/test and store each as uint8 arrays (data/processed)."""

from pathlib import Path

from cnnpipe import datasets, params, stage
from cnnpipe.outputs import atomic_path

RAW, OUT = Path("data/raw"), Path("data/processed")


def main() -> None:
    p = params.load().process
    with atomic_path(OUT) as tmp:
        meta = datasets.write_processed(RAW, tmp, p)
    sizes = {name: sum(c.values()) for name, c in meta.counts.items()}
    stage.progress(f"process: {sizes} of {len(meta.classes)} classes -> {OUT}")


if __name__ == "__main__":
    stage.run(main)
