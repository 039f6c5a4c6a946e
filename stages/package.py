"""Stage 5: put the trained model, with its model card, into the BentoML model store (exported as
an archive too), register it in MLflow's model registry, and build and export a bento around it."""

import os

from cnnpipe.core import kernels

# Before anything imports torch: the bits of a prediction depend on its CPU kernels and threads.
os.environ.update(kernels.inference_environment())

import json
from pathlib import Path

from cnnpipe.core import params, stage
from cnnpipe.core.outputs import atomic_path, write_json
from cnnpipe.core.project import git_revision
from cnnpipe.model import checkpoint
from cnnpipe.serve import packaging
from cnnpipe.tracking import REGISTERED_MODEL, Run


def main(model_file: Path, test_metrics: Path, bentofile: Path, out: Path) -> None:
    p = params.load().package
    model_hash = checkpoint.file_hash(model_file)
    card = checkpoint.card_of(checkpoint.read(model_file)).model_copy(
        update={
            "sha256": model_hash,
            "test_metrics": json.loads(test_metrics.read_text()),
            "git_revision": git_revision() or "unknown",
        }
    )
    version = model_hash[:16]
    model_tag = packaging.store_model(version, model_file, card)
    stage.progress(f"package: model {model_tag} in the BentoML store")
    if (registered := Run.find(model_hash).register_model(model_hash)) is not None:
        stage.progress(f"package: MLflow registry {REGISTERED_MODEL} version {registered}")
    with atomic_path(out) as tmp:
        tmp.mkdir()
        record = {"model": model_tag, "bento": None}
        # what `bentoml models import` reads where the store lacks the model (after `dvc pull`)
        packaging.export_model(model_tag, tmp / packaging.MODEL_ARCHIVE)
        if p.build:
            record["bento"] = packaging.build_bento(bentofile, version, model_tag)
            packaging.export_bento(record["bento"], tmp / f"{packaging.NAME}.bento")
            stage.progress(f"package: bento {record['bento']} -> {out}")
        write_json(tmp / packaging.TAGS_FILE.name, record)


if __name__ == "__main__":
    stage.run(main)
