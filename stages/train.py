"""Stage 3: train the model in params `train` on the processed data; keep the best validation
epoch. Writes the checkpoint, per-epoch metrics and plots (dvclive), and an MLflow run.

With `train.nproc` > 1 it starts itself in that many processes through torchrun; started by
torchrun (`torchrun --nproc_per_node N stages/train.py ...`, one node or many) it trains with
DistributedDataParallel and only rank 0 logs and writes.
"""

import os

from cnnpipe.core import kernels

# Before anything imports torch: it picks its CPU kernels and thread pool as it loads.
os.environ.update(kernels.training_environment())

import sys
from pathlib import Path

from cnnpipe.core import params, stage


def main(processed: Path, model_file: Path, live_dir: Path) -> None:
    p = params.load().train
    # torch loads once the params are known good: a mistyped value stops the stage in a second
    from cnnpipe.train import distributed, session

    kernels.verify(p.determinism)
    session.check(p)  # bad values stop it here, before any process starts
    if p.nproc > 1 and not distributed.launched_by_torchrun():
        stage.progress(f"train: starting {p.nproc} processes (torchrun --standalone)")
        distributed.launch(p.nproc, __file__, sys.argv[1:])
        return
    with distributed.joined(p.device) as (rank, device):
        session.train(p, processed, model_file, live_dir, rank, device)


if __name__ == "__main__":
    stage.run(main)
