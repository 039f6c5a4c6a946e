"""Stage 5: export the trained model to ONNX (the graph only: it reads its weights from the
checkpoint beside it) and check it against torch on the test split, put the packaged model into
the BentoML model store, register it in MLflow's model registry, build a bento around it
(package.build), and record all of it beside the checkpoint.

Outputs: the graph (models/model.onnx) and the record (models/package.json). The checkpoint's
bytes stay where they are: the store entry and the registry's model hard-link them.
"""

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
from cnnpipe.core.outputs import atomic_path, scratch_dir
from cnnpipe.core.project import git_revision
from cnnpipe.model import checkpoint, export, familiarity, files
from cnnpipe.serve import packaging, record
from cnnpipe.tracking import REGISTERED_MODEL, Run

# class probabilities of the export may differ from torch's by float rounding, not more; so
# may its distances to the nearest class (relative to the distance)
MAX_ONNX_DIFFERENCE = 1e-5
MAX_ONNX_DISTANCE_DIFFERENCE = 1e-4


def main(
    model_file: Path,
    processed: Path,
    test_metrics: Path,
    bentofile: Path,
    onnx_file: Path,
    record_file: Path,
) -> None:
    p = params.load().package
    model_hash = files.file_hash(model_file)
    model, card, data = checkpoint.load(model_file)
    statistics = familiarity.from_checkpoint(data)
    card = card.model_copy(
        update={
            "sha256": model_hash,
            "test_metrics": json.loads(test_metrics.read_text()),
            "git_revision": git_revision() or "unknown",
        }
    )
    version = model_hash[:16]
    test = read_split(processed, "test", mmap=True)
    home = scratch_dir(model_file.parent) or model_file.parent  # the checkpoint's file system
    home.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="package-", dir=home) as tmp:
        folder = Path(tmp)  # the packaged model, as the store entry and the registry get it
        files.place(model_file, folder / files.MODEL_FILE)
        graph = export.export_onnx(
            model, card, folder / files.MODEL_FILE, card.temperature, statistics
        )
        (folder / files.ONNX_FILE).write_bytes(graph)
        difference, distance_difference = export.max_difference(
            folder / files.ONNX_FILE,
            model,
            card,
            test.images,
            temperature=card.temperature,
            statistics=statistics,
        )
        for what, found, limit in (
            ("class probabilities", difference, MAX_ONNX_DIFFERENCE),
            ("distances (relative)", distance_difference, MAX_ONNX_DISTANCE_DIFFERENCE),
        ):
            if found > limit:
                raise CnnpipeError(
                    f"package: the ONNX export's {what} differ from torch's by up to "
                    f"{found:.3g} on the {len(test.labels)} test images, over the limit of "
                    f"{limit:g}; report the architecture ({card.architecture}) and serve with "
                    "CNNPIPE_RUNTIME=torch meanwhile"
                )
        stage.progress(
            f"package: ONNX export matches torch on {len(test.labels)} test images "
            f"(max difference {difference:.2g}, of distances {distance_difference:.2g}), "
            f"{len(graph):,} bytes of graph"
        )
        sha256 = files.hashes(folder, files.FILES)
        labels = {"architecture": card.architecture, "classes": str(len(card.classes))}
        # BentoML metadata holds no None
        metadata = {**card.model_dump(exclude_none=True), "onnx_max_difference": difference}
        model_tag = packaging.store_model(
            f"{packaging.NAME}:{version}", folder, labels, metadata, sha256
        )
        stage.progress(f"package: model {model_tag} in the BentoML store")
        registered = Run.find(model_hash).register_model(folder, model_hash)
        if registered is not None:
            stage.progress(
                f"package: MLflow registry {REGISTERED_MODEL} version {registered['version']}"
            )
    bento = packaging.build_bento(bentofile, version, model_tag) if p.build else None
    if bento is not None:
        stage.progress(f"package: bento {bento} in the BentoML store")
    with atomic_path(onnx_file) as tmp_file:
        tmp_file.write_bytes(graph)
    packaged = record.Record(
        model=model_tag,
        bento=bento,
        sha256=sha256,
        labels=labels,
        metadata=metadata,
        registered=record.Registered(**registered) if registered is not None else None,
    )
    record.write(packaged, record_file)


if __name__ == "__main__":
    stage.run(main)
