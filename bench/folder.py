"""What a folder source adds on disk besides data/processed: the folder is read in place.

Makes a scratch project of this checkout with `generate.source: folder` at FOLDER (read where it
is), runs `dvc repro process`, and prints the bytes (as du counts them) of the folder, of
data/raw and its DVC cache copy, of data/processed and its cache copy, and of everything else the
run added to the project (DVC's other files: its tmp, index, the check stage's md5 cache, the
reports), and what the run added besides data/processed as a share of the folder.

    python bench/objects.py DIR --pictures 40    # a folder of colour pictures, for instance
    python bench/folder.py DIR
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import yaml
from quality import repro, scratch_copy, set_params


def on_disk(path: Path) -> int:
    """Bytes the files under path take on disk (as du counts them)."""
    if not path.exists():
        return 0
    return sum(f.lstat().st_blocks * 512 for f in [path, *path.rglob("*")])


def cached(root: Path, out: str) -> int:
    """Bytes the DVC cache holds for the directory output `out` (its manifest and files)."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    (md5,) = [
        o["md5"]
        for stage in lock["stages"].values()
        for o in stage.get("outs", [])
        if o["path"] == out
    ]
    objects = root / ".dvc" / "cache" / "files" / "md5"
    manifest = objects / md5[:2] / md5[2:]
    files = [objects / e["md5"][:2] / e["md5"][2:] for e in json.loads(manifest.read_text())]
    return sum(on_disk(f) for f in {manifest, *files})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    args = parser.parse_args()
    folder = args.folder.resolve()
    with tempfile.TemporaryDirectory(prefix="cnnpipe-folder-") as tmp:
        root = Path(tmp)
        scratch_copy(root)
        set_params(root, {"generate.source": "folder", "generate.folder": str(folder)})
        before = on_disk(root)
        repro(root, "process")
        added = on_disk(root) - before
        raw = on_disk(root / "data/raw") + cached(root, "data/raw")
        processed = on_disk(root / "data/processed") + cached(root, "data/processed")
        images = sum(1 for f in folder.rglob("*") if f.is_file())
        mb = 2**20
        print(f"folder: {images} files, {on_disk(folder) / mb:.1f} MB")
        print(f"data/raw + its cache copy: {raw / mb:.2f} MB")
        print(f"data/processed + its cache copy: {processed / mb:.2f} MB")
        print(f"everything else added: {(added - raw - processed) / mb:.2f} MB")
        besides = added - processed
        print(
            f"added besides data/processed: {besides / mb:.2f} MB, "
            f"{100 * besides / on_disk(folder):.1f}% of the folder"
        )


if __name__ == "__main__":
    main()
