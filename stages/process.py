"""Stage 2: split the raw images into train/val/test and store each as uint8 arrays; the images
per class in each split go to the split report."""

from pathlib import Path

from cnnpipe.core import params, stage
from cnnpipe.core.outputs import atomic_path, write_json
from cnnpipe.data import split


def main(raw: Path, processed: Path, split_file: Path) -> None:
    p = params.load().process
    with atomic_path(processed) as tmp:
        spec, counts = split.write_processed(raw, tmp, p)
    write_json(split_file, counts)
    sizes = {name: sum(c.values()) for name, c in counts.items()}
    stage.progress(f"process: {sizes} of {len(spec.classes)} classes -> {processed}")


if __name__ == "__main__":
    stage.run(main)
