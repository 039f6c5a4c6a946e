"""Stage 2: split data/raw into train/val/test and store each as uint8 arrays (data/processed);
the images per class in each split go to metrics/process/split.json."""

from pathlib import Path

from cnnpipe import datasets, params, stage
from cnnpipe.outputs import atomic_path, write_json

RAW, OUT = Path("data/raw"), Path("data/processed")
REPORT = Path("metrics/process/split.json")


def main() -> None:
    p = params.load().process
    with atomic_path(OUT) as tmp:
        meta = datasets.write_processed(RAW, tmp, p)
    write_json(REPORT, meta.counts)
    sizes = {name: sum(c.values()) for name, c in meta.counts.items()}
    stage.progress(f"process: {sizes} of {len(meta.classes)} classes -> {OUT}")


if __name__ == "__main__":
    stage.run(main)
