"""Stage 2: split the raw images into train/val/test (the folder's own splits when it came with
them; an image's duplicates always in its split) and store each as uint8 arrays. Reports the
images per class in each split, the duplicate groups, and the values `auto` params took."""

from pathlib import Path

import yaml

from cnnpipe.core import params, stage
from cnnpipe.core.outputs import atomic_path, write_json
from cnnpipe.data import split


def main(raw: Path, processed: Path, split_file: Path, duplicates_file: Path, used: Path) -> None:
    p = params.load().process
    model = params.load().train.model  # the size `auto` takes depends on it, and on the source
    bundled = params.load().generate.source != "folder"
    with atomic_path(processed) as tmp:
        done = split.write_processed(raw, tmp, p, model, bundled)
    write_json(split_file, done.counts)
    write_json(duplicates_file, done.duplicates)
    with atomic_path(used) as tmp:
        tmp.write_text(yaml.safe_dump(done.resolved, sort_keys=False))
    found = done.duplicates
    if found["groups_across_given_splits"]:
        stage.progress(
            f"process: warning: {found['groups_across_given_splits']} picture(s) are in more than "
            f"one of the folder's splits (identical or near-duplicate files, e.g. "
            f"{' = '.join(found['examples'][0]['files'][:2])}), so the test figure is not on "
            f"unseen pictures; see {duplicates_file} and keep each picture in one split"
        )
    elif found["groups"]:
        stage.progress(
            f"process: warning: {found['groups']} group(s) of identical or near-duplicate "
            f"images ({found['images_in_groups']} images), each kept within one split; "
            f"see {duplicates_file}"
        )
    sizes = {name: sum(c.values()) for name, c in done.counts.items()}
    shape = f"{done.spec.channels} x {done.spec.image_size} x {done.spec.image_size}"
    stage.progress(f"process: {sizes} of {len(done.spec.classes)} classes, {shape} -> {processed}")


if __name__ == "__main__":
    stage.run(main)
