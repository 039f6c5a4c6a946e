"""Stage 0: check params.yaml, and the image folder, before any stage runs.

DVC removes a stage's outputs before it runs the stage's command, so a stage that refused a bad
value itself would already have lost its last good outputs. Every stage is downstream of this
one, which depends on every params section: a changed value is checked here first, and a bad one
stops the pipeline with one line before anything is removed. With `generate.source: folder` it
also walks the folder and stops on entries DVC would hang or fail on when it hashes the folder
for generate. Its output names the source, so it changes only when the source does.

A folder that is not here although it is the source the last run read (a teammate's clone with
what `dvc pull` brought, the folder not among it) passes: the stages that read it are then
restored rather than re-run (`dvc repro --allow-missing`), and the one that must read it says so.
"""

import json
from pathlib import Path

from cnnpipe.core import params, stage
from cnnpipe.core.outputs import write_json
from cnnpipe.core.project import project_root
from cnnpipe.data import folder


def main(source: Path) -> None:
    p = params.load()  # every section, and how they fit together
    described = folder.describe_source(p.generate)
    if p.generate.source == "folder" and _read_before(source, described):
        stage.progress(
            f"check: params valid; {p.generate.folder} is not here: the stages that read it are "
            "restored, not re-run (dvc repro --allow-missing), until it is"
        )
    elif p.generate.source == "folder":
        listing = folder.list_folder(p.generate.folder, folder.hash_cache(project_root()))
        folder.refuse_unhashable(listing)
        files = sum(len(names) for names in listing.classes.values())
        listed = f"{files} files in {len(listing.classes)} classes, {listing.layout}"
        stage.progress(f"check: params valid; {p.generate.folder}: {listed}")
    else:
        stage.progress("check: params valid")
    write_json(source, described)


def _read_before(source: Path, described: dict) -> bool:
    """Whether the image folder is missing and is the source the last check passed."""
    if Path(described["folder"]).exists() or not source.exists():
        return False
    try:
        return json.loads(source.read_text()) == described
    except ValueError:
        return False


if __name__ == "__main__":
    stage.run(main)
