"""`cnnpipe predict` on a folder of images against the two other ways to classify it, same files,
same model, in one invocation; prints the rates (images/s) and the ratios:

(a) a bare loop in one process: each file decoded by the pipeline's preprocessing
    (cnnpipe.core.preprocess.load), batches of 64 run by the same ONNX session (the service's
    OnnxRuntime on the packaged model.onnx), nothing else;
(b) one request at a time: POST /predict of each file to `bentoml serve` (default settings), the
    next sent when the last is answered.

Each of `cnnpipe predict` and (a) is a fresh process timed from its start to its exit (imports,
model loading and writing the CSV included), alternated `--rounds` times; (b) is timed from the
first request to the last answer of a server already up. The images are synthetic shapes as the
generate stage draws them (64 px RGB PNGs); the model is the workspace's models/model.pt, or an
untrained LeNet-5 (the rate does not depend on the weights), packaged as the package stage does
into a temporary BentoML store.

    python bench/predict.py                    # 10,000 images
    python bench/predict.py --images 2000 --rounds 5 --served 500
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from serve import free_port, package, start  # noqa: E402

from cnnpipe.core.dataset import InputSpec  # noqa: E402
from cnnpipe.core.params import GenerateParams  # noqa: E402
from cnnpipe.data import sources  # noqa: E402
from cnnpipe.model import checkpoint, registry  # noqa: E402
from cnnpipe.predict.files import find_images  # noqa: E402

BARE_LOOP = """
import sys, time
from pathlib import Path
import numpy as np
from cnnpipe.core import preprocess
from cnnpipe.serve.runtime import OnnxRuntime
from cnnpipe.serve.settings import cores
model, size, channels, listing = sys.argv[1:5]
paths = Path(listing).read_text().split("\\n")
runtime = OnnxRuntime(Path(model), cores())
labels = []
for start in range(0, len(paths), 64):
    files = paths[start:start + 64]
    batch = np.stack([preprocess.load(p, int(size), int(channels)) for p in files])
    labels += runtime.probabilities(batch).argmax(1).tolist()
print(" ".join(map(str, labels)))
"""


def images(folder: Path, count: int) -> list[Path]:
    """`count` shapes PNGs (5 classes) as the generate stage writes them."""
    per_class = -(-count // 5)
    sources.write_raw(GenerateParams(images_per_class=per_class), folder)
    return find_images([str(folder)])[:count]


def model(workdir: Path) -> Path:
    if (ROOT / "models/model.pt").exists():
        return ROOT / "models/model.pt"
    spec = InputSpec(
        classes=list(GenerateParams().classes), image_size=32, channels=1, mean=[0.5], std=[0.25]
    )
    path = workdir / "lenet5.pt"
    checkpoint.save(path, registry.build("lenet5", 1, 5, 32), "lenet5", spec, {})
    return path


def timed(command: list[str], env: dict) -> tuple[float, str]:
    began = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{command[:4]} failed: {result.stderr[-3000:]}")
    return time.perf_counter() - began, result.stdout


def served(paths: list[Path], tag: str, env: dict) -> float:
    """Seconds for one /predict at a time over `paths`, after a warm-up."""
    port = free_port()
    command = [sys.executable, "-m", "bentoml", "serve", "--port", str(port)]
    server, _ = start(command, {**env, "CNNPIPE_MODEL": tag}, port)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            for path in paths[:50]:
                client.post("/predict", files={"file": path.read_bytes()})
            began = time.perf_counter()
            for path in paths:
                reply = client.post("/predict", files={"file": (path.name, path.read_bytes())})
                assert reply.status_code == 200, reply.text
            return time.perf_counter() - began
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3, help="runs of (a) and predict each")
    parser.add_argument("--served", type=int, default=0, help="files sent to /predict (0: all)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-predict-"))
    os.environ["BENTOML_HOME"] = str(workdir / "bentoml")
    os.environ["BENTOML_DO_NOT_TRACK"] = "True"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    paths = images(workdir / "images", args.images)
    listing = workdir / "files.txt"
    listing.write_text("\n".join(map(str, paths)))
    model_path = model(workdir)
    tag = package(model_path, "bench0", [p.read_bytes() for p in paths[:256]], workdir)
    import bentoml

    onnx = Path(bentoml.models.get(tag).path) / "model.onnx"
    card = checkpoint.card_of(checkpoint.read(model_path))
    print(
        f"{len(paths)} images, {len(os.sched_getaffinity(0))} cores, {card.architecture} "
        f"{card.image_size} px ({model_path}), {tag}"
    )
    bare = [sys.executable, "-c", BARE_LOOP, str(onnx), str(card.image_size)]
    bare += [str(card.channels), str(listing)]
    out = workdir / "rows.csv"
    cli = [sys.executable, "-c", "from cnnpipe.cli import main; main()", "predict"]
    cli += [str(workdir / "images"), "--model", tag, "--out", str(out)]
    loop_s, cli_s = [], []
    for _ in range(args.rounds):
        seconds, labels = timed(bare, env)
        loop_s.append(seconds)
        cli_s.append(timed(cli, env)[0])
        print(f"  bare loop {seconds:.2f} s, cnnpipe predict {cli_s[-1]:.2f} s", flush=True)
    rows = {r["path"]: r["class_1"] for r in csv.DictReader(out.open())}
    predicted = [card.classes[int(i)] for i in labels.split()]
    assert [rows[str(p)] for p in paths] == predicted, "cnnpipe predict and the loop disagree"
    sent = paths[: args.served or len(paths)]
    serve_s = served(sent, tag, env)
    rate = {
        "cnnpipe predict": len(paths) / np.median(cli_s),
        "(a) bare loop": len(paths) / np.median(loop_s),
        "(b) /predict one at a time": len(sent) / serve_s,
    }
    for name, r in rate.items():
        print(f"{name:28} {r:8.0f} images/s")
    ours = rate.pop("cnnpipe predict")
    for name, r in rate.items():
        print(f"ratio cnnpipe predict / {name}: {ours / r:.2f}")


if __name__ == "__main__":
    main()
