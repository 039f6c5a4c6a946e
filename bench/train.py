"""Training throughput of the train stage's loop against a bare torch loop, in one invocation.

For lenet5 at 32 px and resnet18 at 64 px: the same generated and processed data, model, batch
size, thread count and seed go to `cnnpipe.train.loop.fit` (what stages/train.py runs) and to a
plain loop written with nothing but torch. Both are timed by the wall clock over all their epochs,
validation pass included (the bare loop runs the same forward pass over the validation split each
epoch); model building and data preparation are outside the clock. The runs alternate, starting
with the other one each round, because the machine is shared; the ratio printed is the median of
the per-round ratios (train stage / bare loop).

    python bench/train.py [--rounds 9] [--images-per-class 400] [--threads 0] [--models lenet5]

With --determinism it measures instead what portable mode costs: the same loop.fit in two child
processes per round, one started with the portable environment (AVX2 kernels), one with the
machine's own kernels, both at the same thread count; the ratio is portable / machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnnpipe.core import kernels, params
from cnnpipe.core.dataset import read_spec, read_split
from cnnpipe.data import sources, split
from cnnpipe.model import registry
from cnnpipe.train import loop

CASES = (("lenet5", 32, 8), ("resnet18", 64, 2))  # model, image size, epochs


def prepare(root: Path, images_per_class: int) -> dict[int, Path]:
    """Generated shapes, processed at every image size the cases need."""
    raw = root / "raw"
    sources.write_raw(
        params.parse({"generate": {"images_per_class": images_per_class}}).generate, raw
    )
    out = {}
    for size in sorted({size for _, size, _ in CASES}):
        out[size] = root / f"processed-{size}"
        split.write_processed(raw, out[size], params.ProcessParams(image_size=size))
    return out


def stage_loop(p: params.TrainParams, folder: Path) -> float:
    """Images per second of loop.fit, as the train stage calls it."""
    meta = read_spec(folder)
    train, val = (read_split(folder, s, mmap=None) for s in ("train", "val"))
    loop.make_deterministic(p.seed, p.num_threads)
    model = registry.build(p.model, meta.channels, len(meta.classes), meta.image_size)
    started = time.perf_counter()
    loop.fit(model, train, val, meta.mean, meta.std, p, torch.device("cpu"))
    return p.epochs * len(train.labels) / (time.perf_counter() - started)


def bare_loop(p: params.TrainParams, folder: Path) -> float:
    """Images per second of the plainest torch loop that trains and validates the same way."""
    meta = read_spec(folder)
    train, val = (read_split(folder, s, mmap=None) for s in ("train", "val"))
    loop.make_deterministic(p.seed, p.num_threads)
    model = registry.build(p.model, meta.channels, len(meta.classes), meta.image_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=p.learning_rate)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=p.epochs)
    loss_fn = nn.CrossEntropyLoss()
    mean = torch.tensor(meta.mean).view(1, -1, 1, 1)
    std = torch.tensor(meta.std).view(1, -1, 1, 1)
    started = time.perf_counter()
    x_train, y_train = torch.from_numpy(np.array(train.images)), torch.from_numpy(train.labels)
    x_val = torch.from_numpy(np.array(val.images))
    generator = torch.Generator().manual_seed(p.seed)
    for _ in range(p.epochs):
        model.train()
        order = torch.randperm(len(y_train), generator=generator)
        for start in range(0, len(order), p.batch_size):
            idx = order[start : start + p.batch_size]
            x = (x_train[idx].float() / 255 - mean) / std
            loss = loss_fn(model(x), y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
        model.eval()
        with torch.no_grad():
            for start in range(0, len(x_val), p.batch_size):
                model((x_val[start : start + p.batch_size].float() / 255 - mean) / std)
    return p.epochs * len(y_train) / (time.perf_counter() - started)


def in_child(determinism: str, p: params.TrainParams, folder: Path) -> tuple[str, float]:
    """stage_loop's images per second in a fresh process whose torch loaded with the kernels
    of `determinism` (they are chosen once per process, when torch loads)."""
    env = {k: v for k, v in os.environ.items() if k not in kernels.PORTABLE_ISA["x86_64"][0]}
    env.update(kernels.environment(determinism, p.num_threads))
    child = [sys.executable, __file__, "--child", p.model_dump_json(), str(folder)]
    done = subprocess.run(child, env=env, capture_output=True, text=True, check=True)
    capability, rate = done.stdout.split()[-2:]
    return capability, float(rate)


def determinism_cost(args: argparse.Namespace, folders: dict[int, Path]) -> None:
    """Portable against machine kernels, alternating, the ratio of the medians per round."""
    threads = args.threads or kernels.DEFAULT_THREADS
    print(f"threads {threads}, {args.rounds} rounds, kernels: portable vs this machine's")
    print("model     px  epochs  portable img/s  machine img/s  ratio (median)")
    for name, size, epochs in (case for case in CASES if case[0] in args.models):
        p = params.parse({"train": {"model": name, "epochs": epochs, "num_threads": threads}})
        rates: dict[str, list[float]] = {"portable": [], "machine": []}
        ratios, seen = [], {}
        for round_ in range(args.rounds):
            order = ("portable", "machine") if round_ % 2 == 0 else ("machine", "portable")
            got = {mode: in_child(mode, p.train, folders[size]) for mode in order}
            for mode, (capability, rate) in got.items():
                rates[mode].append(rate)
                seen[mode] = capability
            ratios.append(got["portable"][1] / got["machine"][1])
        print(
            f"{name:9} {size:3} {epochs:6}  {statistics.median(rates['portable']):14.0f}  "
            f"{statistics.median(rates['machine']):13.0f}  {statistics.median(ratios):.3f} "
            f"(per round: {', '.join(f'{r:.3f}' for r in ratios)}; kernels {seen['portable']} "
            f"vs {seen['machine']})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--images-per-class", type=int, default=400)
    parser.add_argument("--threads", type=int, default=0, help="0: torch's default")
    parser.add_argument("--models", nargs="+", default=[name for name, _, _ in CASES])
    parser.add_argument("--determinism", action="store_true", help="portable vs machine kernels")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        p = params.TrainParams.model_validate_json(args.child[0])
        print(f"{torch.backends.cpu.get_cpu_capability()} {stage_loop(p, Path(args.child[1]))}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        folders = prepare(Path(tmp), args.images_per_class)
        if args.determinism:
            determinism_cost(args, folders)
            return
        print(f"threads {args.threads or torch.get_num_threads()}, {args.rounds} rounds")
        print("model     px  epochs  train stage img/s  bare loop img/s  ratio (median)")
        for name, size, epochs in (case for case in CASES if case[0] in args.models):
            p = params.parse(
                {
                    "train": {
                        "model": name,
                        "epochs": epochs,
                        "num_threads": args.threads,
                        "determinism": "portable" if args.threads else "machine",
                    }
                }
            ).train
            stage, bare, ratios = [], [], []
            for round_ in range(args.rounds):
                runs = (stage_loop, bare_loop) if round_ % 2 == 0 else (bare_loop, stage_loop)
                rates = {run.__name__: run(p, folders[size]) for run in runs}
                stage.append(rates["stage_loop"])
                bare.append(rates["bare_loop"])
                ratios.append(rates["stage_loop"] / rates["bare_loop"])
            print(
                f"{name:9} {size:3} {epochs:6}  {statistics.median(stage):17.0f}  "
                f"{statistics.median(bare):15.0f}  {statistics.median(ratios):.3f} "
                f"(per round: {', '.join(f'{r:.3f}' for r in ratios)})"
            )


if __name__ == "__main__":
    main()
