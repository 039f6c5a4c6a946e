"""The package stage: the model into the BentoML store as one more name of the checkpoint's bytes,
a bento built around it; the bento exported and served from an empty store."""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import Project, serving, stages_run, tiny_params
from packaging.requirements import Requirement

from cnnpipe.model import files
from cnnpipe.serve import record

pytestmark = pytest.mark.e2e

STORE_ANOTHER_MODEL = """
from pathlib import Path
from cnnpipe.model import files
from cnnpipe.serve import packaging
models = Path("models")
sha256 = files.hashes(models, files.FILES)
print(packaging.store_model("cnnpipe:ffffffffffffffff", models, {}, {}, sha256))
"""


def test_the_bento_bundles_the_workspace_model_and_serves_from_an_empty_store(
    workspace: Project, tmp_path: Path
):
    # A model stored after the workspace's: the store's latest, which the bento must not take.
    newer = workspace.run("python", "-c", STORE_ANOTHER_MODEL).stdout.strip()
    assert newer == "cnnpipe:ffffffffffffffff"
    workspace.write_params(tiny_params(package={"build": True}))
    assert stages_run(workspace.dvc("repro").stdout) == ["package"]

    model_file = workspace.root / "models/model.pt"
    version = files.file_hash(model_file)[:16]
    packaged = record.read(workspace.root / record.RECORD)
    assert (packaged.model, packaged.bento) == (f"cnnpipe:{version}", f"cnnpipe:{version}")
    # The checkpoint's bytes are on disk once: the workspace, DVC's cache and the store entry
    # are names of one file.
    stored = Path(workspace.env["BENTOML_HOME"], "models", "cnnpipe", version)
    assert (stored / files.MODEL_FILE).stat().st_ino == model_file.stat().st_ino
    assert model_file.stat().st_nlink >= 3

    archive = tmp_path / "cnnpipe.bento"  # exported when asked, not by the stage
    bentoml_cli = (sys.executable, "-m", "bentoml")
    workspace.run(*bentoml_cli, "export", packaged.bento, str(archive))
    with tarfile.open(archive) as bento:
        names = bento.getnames()
        (requirements,) = [n for n in names if n.endswith("env/python/requirements.txt")]
        installs = bento.extractfile(requirements).read().decode().splitlines()
    assert {Path(n).parts[-2] for n in names if n.endswith(files.MODEL_FILE)} == {version}
    assert {Path(n).parts[-2] for n in names if n.endswith(files.ONNX_FILE)} == {version}
    assert not any("stages/" in n or "/data/" in n or n.endswith("tracking.py") for n in names)
    # a container of the bento installs the lock's versions, every one pinned
    # (compared parsed: BentoML rewrites the markers' quotes)
    written = workspace.root / "src/cnnpipe/serve/bento-requirements.txt"
    locked = [str(Requirement(line)) for line in written.read_text().splitlines() if line[0] != "#"]
    bentoml_pin = next(line for line in locked if line.startswith("bentoml=="))
    # BentoML adds the version that builds it, which is the lock's
    assert [str(Requirement(line)) for line in installs if line and line[0] != "#"] == [
        *locked,
        bentoml_pin,
    ]

    empty = {**workspace.env, "BENTOML_HOME": str(tmp_path / "empty-store")}
    imported = subprocess.run(
        [*bentoml_cli, "import", str(archive)],
        cwd=tmp_path,
        env=empty,
        capture_output=True,
        text=True,
    )
    assert imported.returncode == 0, imported.stderr
    image = next((workspace.root / "data/raw/images/circle").iterdir())
    with serving(tmp_path, empty, f"cnnpipe:{version}") as url:
        metadata = httpx.get(f"{url}/metadata").json()
        with open(image, "rb") as f:
            reply = httpx.post(f"{url}/predict", files={"file": f}, timeout=30)
        # the pages' files are in the bento (bentofile.yaml includes them)
        pages = [httpx.get(f"{url}{path}") for path in ("/", "/page/page.js", "/docs")]
    assert [page.status_code for page in pages] == [200] * 3
    assert "<h1>cnnpipe</h1>" in pages[0].text and "swagger-ui" in pages[2].text.lower()
    assert metadata["model"] == f"cnnpipe:{version}"
    assert metadata["runtime"] == "onnx" and metadata["onnx_max_difference"] <= 1e-5
    assert metadata["sha256"] == files.file_hash(model_file)
    assert reply.status_code == 200 and set(reply.json()["probabilities"]) == {
        "circle",
        "square",
        "triangle",
    }


CHECK_WITH_NO_TOLERANCE = """
import sys
sys.path.insert(0, "stages")
import package
from cnnpipe.core import stage
package.MAX_ONNX_DIFFERENCE = -1.0  # any difference, even none, is too much
stage.run(package.main)
"""


def test_an_export_that_differs_from_torch_fails_the_stage_with_the_figure(workspace: Project):
    outs = [workspace.root / record.RECORD, workspace.root / "models" / files.ONNX_FILE]
    before = [path.read_bytes() for path in outs]
    stages = yaml.safe_load((workspace.root / "dvc.yaml").read_text())["stages"]
    paths = stages["package"]["cmd"].split()[2:]
    paths = [
        p.replace("${model}", "models/model.pt").replace("${processed}", "data/processed")
        for p in paths
    ]
    result = workspace.run("python", "-c", CHECK_WITH_NO_TOLERANCE, *paths, check=False)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert re.search(r"differ from torch's by up to [0-9.e-]+ on the \d+ test images", line), line
    assert [path.read_bytes() for path in outs] == before
