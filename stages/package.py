"""Stage 5: export the trained model to ONNX and check it against torch on the test split, put
both, with the model card, into the BentoML model store (exported as an archive too), register
the model in MLflow's model registry, and build and export a bento around it."""

import os

from cnnpipe.core import kernels

# Before anything imports torch: the bits of a prediction depend on its CPU kernels and threads.
os.environ.update(kernels.inference_environment())

import json
import tempfile
from pathlib import Path

from cnnpipe.core import params, stage
from cnnpipe.core.dataset import read_split
from cnnpipe.core.errors import CnnpipeError
from cnnpipe.core.outputs import atomic_path, write_json
from cnnpipe.core.project import git_revision
from cnnpipe.model import checkpoint, export
from cnnpipe.serve import packaging
from cnnpipe.tracking import REGISTERED_MODEL, Run

# class probabilities of the export may differ from torch's by float rounding, not more
MAX_ONNX_DIFFERENCE = 1e-5


def main(model_file: Path, processed: Path, test_metrics: Path, bentofile: Path, out: Path) -> None:
    p = params.load().package
    model_hash = checkpoint.file_hash(model_file)
    model, card, _ = checkpoint.load(model_file)
    card = card.model_copy(
        update={
            "sha256": model_hash,
            "test_metrics": json.loads(test_metrics.read_text()),
            "git_revision": git_revision() or "unknown",
        }
    )
    version = model_hash[:16]
    test = read_split(processed, "test", mmap=True)
    with tempfile.TemporaryDirectory(prefix="cnnpipe-onnx-") as tmp_dir:
        onnx_file = Path(tmp_dir) / packaging.ONNX_FILE
        export.export_onnx(model, card, onnx_file, card.temperature)
        difference = export.max_difference(
            onnx_file, model, card, test.images, temperature=card.temperature
        )
        if difference > MAX_ONNX_DIFFERENCE:
            raise CnnpipeError(
                f"package: the ONNX export's class probabilities differ from torch's by up to "
                f"{difference:.3g} on the {len(test.labels)} test images, over the limit of "
                f"{MAX_ONNX_DIFFERENCE:g}; report the architecture ({card.architecture}) and "
                "serve with CNNPIPE_RUNTIME=torch meanwhile"
            )
        stage.progress(
            f"package: ONNX export matches torch on {len(test.labels)} test images "
            f"(max difference {difference:.2g})"
        )
        checked = {"onnx_max_difference": difference}
        model_tag = packaging.store_model(version, model_file, card, onnx_file, checked)
    stage.progress(f"package: model {model_tag} in the BentoML store")
    if (registered := Run.find(model_hash).register_model(model_hash)) is not None:
        stage.progress(f"package: MLflow registry {REGISTERED_MODEL} version {registered}")
    with atomic_path(out) as tmp:
        tmp.mkdir()
        record = {"model": model_tag, "bento": None}
        # what `bentoml models import` reads where the store lacks the model (after `dvc pull`)
        packaging.export_model(model_tag, tmp / packaging.MODEL_ARCHIVE)
        if p.build:
            record["bento"] = bento = packaging.build_bento(bentofile, version, model_tag)
            packaging.export_bento(bento, tmp / f"{packaging.NAME}.bento")
            stage.progress(f"package: bento {bento} -> {out}")
        write_json(tmp / packaging.TAGS_FILE.name, record)


if __name__ == "__main__":
    stage.run(main)
