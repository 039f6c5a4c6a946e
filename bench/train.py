"""Training throughput of the train stage's loop against bare torch loops, in one invocation.

For lenet5 at 32 px grey and resnet18 at 64 px RGB (the shapes generated at 64 px, processed to
each), with the train params a user gets by default (the architecture's recipe for the `auto`
values), two tables:

1. The train stage's loop (`cnnpipe.train.loop.fit`, what stages/train.py runs, augmentation and
   validation included) against a bare torch loop with the same settings: model, batch size,
   threads, kernels, memory format, deterministic algorithms, and the same validation forward
   pass each epoch. They run in this process, alternating (the other one first each round,
   because the machine may be shared); the ratio is the median of the per-round ratios.
2. What the settings cost: the bare loop in child processes (kernels and threads are fixed when
   torch loads) with the stage's settings (portable: AVX2 kernels, `train.num_threads`,
   deterministic algorithms), then with one change at a time, and with the fastest this machine
   offers (its own kernels, every core, channels-last, no deterministic algorithms). Each row's
   rate is the median over the rounds, and its ratio is to the fastest.

    python bench/train.py [--rounds 5] [--images-per-class 400] [--models lenet5 resnet18]
                          [--epochs N]    # N epochs for every case (default: 8 and 2)
    python bench/train.py --pieces            # 3. what each piece of the recipe for pictures costs
    python bench/train.py --resume            # 4. what saving the state each epoch costs

3. With --pieces, instead: the train stage's loop with each piece of the recipe for pictures
   switched on alone (`train.flip`, `crop_scale`, `color_jitter`, `auto_augment`, `mixup` and
   `cutmix`), against the loop with none of them (flip off too), alternating; the ratio is to
   that baseline.
4. With --resume, instead: the train stage's loop with and without saving its whole state at the
   end of each epoch (`train.resume`, cnnpipe.train.resume, into a temporary folder on the disk
   of the data), alternating; the ratio is with / without, and each save is timed and its file
   sized.

Model building and data preparation are outside the clocks; both loops are timed over all their
epochs by the wall clock.
"""

from __future__ import annotations

import os
import sys

from cnnpipe.core import kernels

# Table 1 runs in this process as the train stage runs: portable kernels at the default threads
# (the child processes of table 2 set their own). Kernels are chosen when torch loads.
if "--child" not in sys.argv:
    os.environ.update(kernels.environment())

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from cnnpipe.core import params  # noqa: E402
from cnnpipe.core.dataset import read_spec, read_split  # noqa: E402
from cnnpipe.data import sources, split  # noqa: E402
from cnnpipe.model import registry  # noqa: E402
from cnnpipe.train import loop, recipe, resume  # noqa: E402

# model, image size, channels, epochs
CASES = (("lenet5", 32, 1, 8), ("resnet18", 64, 3, 2))
# the settings of table 2: name -> (determinism mode, threads (0: every core), channels_last,
# deterministic algorithms); None: as the train params say
SETTINGS = {
    "stage's settings": (None, None, None, True),
    "+ channels-last": (None, None, True, True),
    "+ machine kernels": ("machine", None, None, True),
    "- deterministic algorithms": (None, None, None, False),
    "fastest": ("machine", 0, True, False),
}


def cases(args: argparse.Namespace) -> list[tuple[str, int, int, int]]:
    """The CASES of `--models`, each with its own epochs, or `--epochs` if given."""
    chosen = [c for c in CASES if c[0] in args.models]
    return [(m, size, ch, args.epochs or epochs) for m, size, ch, epochs in chosen]


def prepare(root: Path, images_per_class: int) -> dict[tuple[int, int], Path]:
    """Generated shapes, processed at every size and channel count the cases need."""
    raw = root / "raw"
    generate = params.parse({"generate": {"images_per_class": images_per_class}}).generate
    sources.write_raw(generate, raw)
    out = {}
    for _, size, channels, _ in CASES:
        out[size, channels] = root / f"processed-{size}-{channels}"
        process = params.ProcessParams(image_size=size, channels=channels)
        split.write_processed(raw, out[size, channels], process, "resnet18")
    return out


def train_params(model: str, epochs: int, channels: int, size: int) -> params.TrainParams:
    """The default train params for `model` on `size` px images of `channels` channels, `auto`
    values resolved as the train stage resolves them."""
    p = params.parse({"train": {"model": model, "epochs": epochs}}).train
    return recipe.resolve(p, channels, size)[0]


def stage_loop(p: params.TrainParams, folder: Path, save_state=None) -> float:
    """Images per second of loop.fit, as the train stage calls it."""
    meta = read_spec(folder)
    train, val = (read_split(folder, s, mmap=None) for s in ("train", "val"))
    loop.make_deterministic(p.seed, p.num_threads)
    model = registry.build(p.model, meta.channels, len(meta.classes), meta.image_size)
    started = time.perf_counter()
    loop.fit(model, train, val, meta.mean, meta.std, p, torch.device("cpu"), save_state=save_state)
    return p.epochs * len(train.labels) / (time.perf_counter() - started)


def bare_loop(p: params.TrainParams, folder: Path, deterministic: bool = True) -> float:
    """Images per second of the plainest torch loop that trains and validates the same way."""
    meta = read_spec(folder)
    train, val = (read_split(folder, s, mmap=None) for s in ("train", "val"))
    torch.manual_seed(p.seed)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    if p.num_threads:
        torch.set_num_threads(p.num_threads)
    layout = torch.channels_last if p.channels_last else torch.contiguous_format
    model = registry.build(p.model, meta.channels, len(meta.classes), meta.image_size)
    model = model.to(memory_format=layout)
    optimizer = torch.optim.AdamW(model.parameters(), lr=p.learning_rate)
    loss_fn = nn.CrossEntropyLoss()
    mean = torch.tensor(meta.mean).view(1, -1, 1, 1)
    std = torch.tensor(meta.std).view(1, -1, 1, 1)

    def inputs(batch: torch.Tensor) -> torch.Tensor:
        return ((batch.float() / 255 - mean) / std).contiguous(memory_format=layout)

    started = time.perf_counter()
    x_train, y_train = torch.from_numpy(np.array(train.images)), torch.from_numpy(train.labels)
    x_val = torch.from_numpy(np.array(val.images))
    generator = torch.Generator().manual_seed(p.seed)
    for _ in range(p.epochs):
        model.train()
        order = torch.randperm(len(y_train), generator=generator)
        for start in range(0, len(order), p.batch_size):
            idx = order[start : start + p.batch_size]
            loss = loss_fn(model(inputs(x_train[idx])), y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            for start in range(0, len(x_val), p.batch_size):
                model(inputs(x_val[start : start + p.batch_size]))
    return p.epochs * len(y_train) / (time.perf_counter() - started)


def in_child(setting: str, p: params.TrainParams, folder: Path) -> tuple[str, int, float]:
    """The bare loop's images per second under one of SETTINGS, in a fresh process whose torch
    loaded with that setting's kernels and threads; and the kernels and threads it ran."""
    mode, threads, channels_last, deterministic = SETTINGS[setting]
    p = p.model_copy(
        update={
            "determinism": mode or p.determinism,
            "num_threads": p.num_threads if threads is None else threads,
            "channels_last": p.channels_last if channels_last is None else channels_last,
        }
    )
    env = {k: v for k, v in os.environ.items() if k not in kernels.PORTABLE_ISA["x86_64"][0]}
    env = {k: v for k, v in env.items() if k not in kernels.THREAD_VARIABLES}
    env.update(kernels.environment(p.determinism, p.num_threads))
    child = [sys.executable, __file__, "--child", p.model_dump_json(), str(folder)]
    child += ["--deterministic"] if deterministic else []
    done = subprocess.run(child, env=env, capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.splitlines()[-1])
    return result["capability"], result["threads"], result["rate"]


def compare_loops(args: argparse.Namespace, folders: dict) -> None:
    print(f"\n1. train stage against a bare loop, same settings ({args.rounds} rounds)")
    print(
        "| model | px | channels | epochs | threads | train stage img/s | bare loop img/s | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, size, channels, epochs in cases(args):
        p = train_params(name, epochs, channels, size)
        stage, bare, ratios = [], [], []
        for round_ in range(args.rounds):
            runs = (stage_loop, bare_loop) if round_ % 2 == 0 else (bare_loop, stage_loop)
            rates = {run.__name__: run(p, folders[size, channels]) for run in runs}
            stage.append(rates["stage_loop"])
            bare.append(rates["bare_loop"])
            ratios.append(rates["stage_loop"] / rates["bare_loop"])
        per_round = ", ".join(f"{r:.3f}" for r in ratios)
        print(
            f"| {name} | {size} | {channels} | {epochs} | {torch.get_num_threads()} "
            f"| {statistics.median(stage):.0f} | {statistics.median(bare):.0f} "
            f"| {statistics.median(ratios):.3f} ({per_round}) |"
        )


def compare_settings(args: argparse.Namespace, folders: dict) -> None:
    print(f"\n2. what the settings cost: the bare loop in child processes ({args.rounds} rounds)")
    print("| model | px | setting | kernels | threads | img/s | of the fastest |")
    print("|---|---|---|---|---|---|---|")
    for name, size, channels, epochs in cases(args):
        p = train_params(name, epochs, channels, size)
        rates: dict[str, list[float]] = {s: [] for s in SETTINGS}
        ran: dict[str, tuple[str, int]] = {}
        for round_ in range(args.rounds):
            order = list(SETTINGS) if round_ % 2 == 0 else list(reversed(SETTINGS))
            for setting in order:
                capability, threads, rate = in_child(setting, p, folders[size, channels])
                rates[setting].append(rate)
                ran[setting] = (capability, threads)
        fastest = statistics.median(rates["fastest"])
        for setting, measured in rates.items():
            rate = statistics.median(measured)
            capability, threads = ran[setting]
            print(
                f"| {name} | {size} | {setting} | {capability} | {threads} | {rate:.0f} "
                f"| {rate / fastest:.3f} |"
            )


PIECES = {
    "flip": {"flip": True},
    "crop_scale 0.35": {"crop_scale": 0.35},
    "color_jitter 0.4": {"color_jitter": 0.4},
    "auto_augment trivial": {"auto_augment": "trivial"},
    "auto_augment rand": {"auto_augment": "rand"},
    "mixup 0.2 + cutmix 1.0": {"mixup": 0.2, "cutmix": 1.0},
}


def compare_pieces(args: argparse.Namespace, folders: dict) -> None:
    print(f"\n3. what each piece of the recipe for pictures costs ({args.rounds} rounds)")
    print("| model | px | piece | train stage img/s | without it | ratio |")
    print("|---|---|---|---|---|---|")
    for name, size, channels, epochs in cases(args):
        base = train_params(name, epochs, channels, size)
        base = base.model_copy(update={"flip": False, "crop_scale": 1.0})
        for piece, changes in PIECES.items():
            with_it = base.model_copy(update=changes)
            on, off, ratios = [], [], []
            for round_ in range(args.rounds):
                pair = (with_it, base) if round_ % 2 == 0 else (base, with_it)
                rates = [stage_loop(p, folders[size, channels]) for p in pair]
                if round_ % 2:
                    rates.reverse()
                on.append(rates[0])
                off.append(rates[1])
                ratios.append(rates[0] / rates[1])
            print(
                f"| {name} | {size} | {piece} | {statistics.median(on):.0f} "
                f"| {statistics.median(off):.0f} | {statistics.median(ratios):.3f} |"
            )


def resume_cost(args: argparse.Namespace, folders: dict) -> None:
    """loop.fit with and without a state saved each epoch, alternating; the ratio of the rates
    (with / without) per round, the seconds of each save and the state's bytes."""
    print(f"\n4. what saving the state each epoch costs ({args.rounds} rounds)")
    print("| model | px | epochs | without img/s | with img/s | ratio | save s | state MB |")
    print("|---|---|---|---|---|---|---|---|")
    for name, size, channels, epochs in cases(args):
        p = train_params(name, epochs, channels, size)
        folder = folders[size, channels]
        states = resume.EpochStates(folder / "state" / "model.pt")
        saves: list[float] = []

        def timed_save(state: dict, states=states, saves=saves) -> None:
            started = time.perf_counter()
            states.save(state)
            saves.append(time.perf_counter() - started)

        rates: dict[str, list[float]] = {"without": [], "with": []}
        ratios = []
        for round_ in range(args.rounds):
            order = ("without", "with") if round_ % 2 == 0 else ("with", "without")
            got = {
                mode: stage_loop(p, folder, timed_save if mode == "with" else None)
                for mode in order
            }
            for mode, rate in got.items():
                rates[mode].append(rate)
            ratios.append(got["with"] / got["without"])
        megabytes = states.path.stat().st_size / 1e6
        print(
            f"| {name} | {size} | {epochs} | {statistics.median(rates['without']):.0f} "
            f"| {statistics.median(rates['with']):.0f} | {statistics.median(ratios):.3f} "
            f"| {statistics.median(saves):.2f} | {megabytes:.1f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images-per-class", type=int, default=400)
    parser.add_argument("--models", nargs="+", default=[c[0] for c in CASES])
    parser.add_argument("--epochs", type=int, help="epochs of every case (default: its own)")
    parser.add_argument("--pieces", action="store_true", help="what each recipe piece costs")
    parser.add_argument("--resume", action="store_true", help="with vs without the epoch states")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--deterministic", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        p = params.TrainParams.model_validate_json(args.child[0])
        rate = bare_loop(p, Path(args.child[1]), args.deterministic)
        capability = torch.backends.cpu.get_cpu_capability()
        print(
            json.dumps({"capability": capability, "threads": torch.get_num_threads(), "rate": rate})
        )
        return
    with tempfile.TemporaryDirectory() as tmp:
        folders = prepare(Path(tmp), args.images_per_class)
        if args.pieces:
            compare_pieces(args, folders)
            return
        if args.resume:
            resume_cost(args, folders)
            return
        compare_loops(args, folders)
        compare_settings(args, folders)


if __name__ == "__main__":
    main()
