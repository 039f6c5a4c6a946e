"""Stage 0: check params.yaml, and the image folder, before any stage runs.

DVC removes a stage's outputs before it runs the stage's command, so a stage that refused a bad
value itself would already have lost its last good outputs. Every stage is downstream of this
one, which depends on every params section: a changed value is checked here first, and a bad one
stops the pipeline with one line before anything is removed. With `generate.source: folder` it
also walks the folder and stops on entries DVC would hang or fail on when it hashes the folder
for generate. Its output names the source, so it changes only when the source does.
"""

from pathlib import Path

from cnnpipe.core import params, stage
from cnnpipe.core.outputs import write_json
from cnnpipe.core.project import project_root
from cnnpipe.data import folder


def main(source: Path) -> None:
    p = params.load()  # every section, and how they fit together
    if p.generate.source == "folder":
        listing = folder.list_folder(p.generate.folder, folder.hash_cache(project_root()))
        folder.refuse_unhashable(listing)
        files = sum(len(names) for names in listing.classes.values())
        listed = f"{files} files in {len(listing.classes)} classes, {listing.layout}"
        stage.progress(f"check: params valid; {p.generate.folder}: {listed}")
    else:
        stage.progress("check: params valid")
    write_json(source, folder.describe_source(p.generate))


if __name__ == "__main__":
    stage.run(main)
