"""Stage 0: check params.yaml, and list the image folder, before any stage runs.

DVC removes a stage's outputs before it runs the stage's command, so a stage that refused a bad
value itself would already have lost its last good outputs. This stage runs first, on every
`dvc repro` (`always_changed`), and stops the pipeline with one line on a bad value or an unusable
folder before anything is removed. Its output (`persist`: never removed) is the description of the
image source, for a folder the listing of its files with their md5s: generate depends on it
instead of on the folder, which DVC cannot always hash (cnnpipe.data.folder), and it changes only
when the images do, so nothing downstream re-runs for a check.
"""

from pathlib import Path

from cnnpipe.core import params, stage
from cnnpipe.core.outputs import scratch_dir, write_json
from cnnpipe.core.project import project_root
from cnnpipe.data import folder


def main(source: Path) -> None:
    p = params.load()  # every section, and how they fit together
    scratch = scratch_dir(project_root())
    cache = scratch / "folder-md5.json" if scratch else None
    described = folder.describe_source(p.generate, cache)
    write_json(source, described)
    if p.generate.source == "folder":
        files = sum(len(names) for names in described["classes"].values())
        listed = f"{files} files in {len(described['classes'])} classes"
        stage.progress(f"check: params valid; {p.generate.folder}: {listed} -> {source}")
    else:
        stage.progress(f"check: params valid -> {source}")


if __name__ == "__main__":
    stage.run(main)
