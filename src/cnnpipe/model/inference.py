"""Running a model: the device, batches normalised on it, and predictions over a split or an
upload batch. Training, evaluation and the service share these."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cnnpipe.core.dataset import IN_MEMORY_LIMIT, InputSpec
from cnnpipe.core.errors import CnnpipeError
from cnnpipe.core.preprocess import normalize


def select_device(choice: str, local_rank: int = 0) -> torch.device:
    """cpu, or the CUDA device of this process (one per local rank) when asked or when `auto`
    finds one."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise CnnpipeError("train.device is cuda but no CUDA device is available; set device: auto")
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def as_tensor(images: np.ndarray) -> torch.Tensor | np.ndarray:
    """uint8 images as a tensor (an array in RAM as it is, a memory map copied into RAM when it
    is small), else the memory map itself, gathered batch by batch."""
    if not isinstance(images, np.memmap):
        return torch.from_numpy(images)
    if images.nbytes <= IN_MEMORY_LIMIT:
        return torch.from_numpy(np.array(images))
    return images


class Placement:
    """Where and how batches are computed: the device, the normalisation (done on the device),
    the memory format and the precision."""

    def __init__(
        self,
        device: torch.device,
        mean: list[float],
        std: list[float],
        channels_last: bool = False,
        bf16: bool = False,
    ) -> None:
        self.device = device
        self.mean, self.std = mean, std
        self.cuda = device.type == "cuda"
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.autocast = bf16

    def inputs(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A uint8 batch and its labels on the device, the batch normalised."""
        if self.cuda and x.device.type == "cpu":  # pinned pages let the copy run asynchronously
            x, y = x.pin_memory(), y.pin_memory()
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        return normalize(x, self.mean, self.std).contiguous(memory_format=self.memory_format), y

    def precision(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast)


@torch.no_grad()
def predict(
    model: nn.Module,
    images: torch.Tensor | np.ndarray,
    labels: torch.Tensor,
    placement: Placement,
    batch_size: int,
) -> tuple[float, float, torch.Tensor]:
    """(mean loss, accuracy, predicted class per image) of a model on uint8 images, in order."""
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    total_loss, predictions = 0.0, []
    for start in range(0, len(labels), batch_size):
        x = images[start : start + batch_size]
        if not isinstance(x, torch.Tensor):  # a memory map's slice: copied, the map is read-only
            x = torch.from_numpy(np.array(x))
        x, y = placement.inputs(x, labels[start : start + batch_size])
        with placement.precision():
            logits = model(x)
        total_loss += float(loss_fn(logits.float(), y))
        predictions.append(logits.argmax(1).cpu())
    predicted = torch.cat(predictions) if predictions else torch.empty(0, dtype=torch.long)
    accuracy = float((predicted == labels.cpu()).float().mean()) if len(labels) else 0.0
    return total_loss / max(1, len(labels)), accuracy, predicted


@torch.no_grad()
def logits(
    model: nn.Module, images: torch.Tensor | np.ndarray, placement: Placement, batch_size: int
) -> torch.Tensor:
    """The logits (N, classes) of a model on uint8 images, in order, on the CPU in float32."""
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size]
        if not isinstance(x, torch.Tensor):  # a memory map's slice: copied, the map is read-only
            x = torch.from_numpy(np.array(x))
        x, _ = placement.inputs(x, torch.empty(0))
        with placement.precision():
            out.append(model(x).float().cpu())
    return torch.cat(out) if out else torch.empty(0)


def probabilities(
    model: nn.Module, spec: InputSpec, batch: np.ndarray, temperature: float = 1.0
) -> np.ndarray:
    """Class probabilities, softmax(logits / temperature), for a uint8 batch (N, C, H, W) made by
    preprocess.load."""
    with torch.inference_mode():
        x = normalize(torch.as_tensor(batch), spec.mean, spec.std)
        return torch.softmax(model(x) / temperature, dim=1).numpy()
