"""Stage 5: put models/model.pt into the BentoML model store and export a bento (models/bento)."""

import json
from pathlib import Path

from cnnpipe import checkpoint, packaging, params, stage
from cnnpipe.outputs import atomic_path, write_json
from cnnpipe.project import git_revision

MODEL, METRICS, OUT = (
    Path("models/model.pt"),
    Path("metrics/evaluate/metrics.json"),
    Path("models/bento"),
)
BENTOFILE = Path("bentofile.yaml")


def main() -> None:
    p = params.load().package
    data = checkpoint.read(MODEL)
    info = checkpoint.info_of(data)
    model_hash = checkpoint.file_hash(MODEL)
    version = model_hash[:16]
    metadata = {
        **info.__dict__,
        "sha256": model_hash,
        "test_metrics": json.loads(METRICS.read_text()),
        "git_revision": git_revision() or "unknown",
        "best_epoch": data.get("best_epoch"),
    }
    model_tag = packaging.store_model(version, MODEL, info, metadata)
    stage.progress(f"package: model {model_tag} in the BentoML store")
    with atomic_path(OUT) as tmp:
        tmp.mkdir()
        record = {"model": model_tag, "bento": None}
        if p.build:
            record["bento"] = packaging.build_bento(BENTOFILE, version, model_tag)
            packaging.export_bento(record["bento"], tmp / "cnnpipe.bento")
            stage.progress(f"package: bento {record['bento']} -> {OUT / 'cnnpipe.bento'}")
        write_json(tmp / packaging.TAGS_FILE.name, record)


if __name__ == "__main__":
    stage.run(main)
