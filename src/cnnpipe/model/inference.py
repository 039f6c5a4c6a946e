"""Running a model: the device, batches normalised on it, and predictions over a split or an
upload batch. Training, evaluation and the service share these."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch
from torch import nn

from cnnpipe.core.dataset import IN_MEMORY_LIMIT, InputSpec
from cnnpipe.core.errors import CnnpipeError
from cnnpipe.core.preprocess import normalize
from cnnpipe.model import familiarity


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
    return logits_and_features(model, images, placement, batch_size)[0]


@torch.no_grad()
def logits_and_features(
    model: nn.Module,
    images: torch.Tensor | np.ndarray,
    placement: Placement,
    batch_size: int,
    layers: list[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits (N, classes) of a model on uint8 images, in order, and their feature vectors
    from these layers (N, features; (N, 0) without layers: cnnpipe.model.familiarity), on the
    CPU in float32."""
    model.eval()
    out, features = [], []
    capture: AbstractContextManager[list[torch.Tensor]] = (
        familiarity.captured(model, layers) if layers else nullcontext([])
    )
    with capture as found:
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size]
            if not isinstance(x, torch.Tensor):  # a memory map's slice: copied (it is read-only)
                x = torch.from_numpy(np.array(x))
            x, _ = placement.inputs(x, torch.empty(0))
            with placement.precision():
                out.append(model(x).float().cpu())
            features += [f.float().cpu() for f in found]
            found.clear()
    z = torch.cat(out) if out else torch.empty(0)
    return z, torch.cat(features) if features else torch.empty((len(z), 0))


class ServedModel(nn.Module):
    """What the service computes for a uint8 batch (N, C, H, W) made by preprocess.load: the
    pipeline's normalisation, the model, softmax(logits / temperature) (the calibration), and,
    with feature statistics, the distance of the image's features to the nearest class
    (cnnpipe.model.familiarity). The ONNX export is this module traced, and the torch runtime
    runs it: both compute the same."""

    def __init__(
        self,
        model: nn.Module,
        spec: InputSpec,
        temperature: float = 1.0,
        statistics: familiarity.FeatureStatistics | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.mean, self.std = spec.mean, spec.std
        self.temperature = temperature
        self.layers = statistics.layers if statistics is not None else None
        if statistics is not None:
            self.register_buffer("means", statistics.means)
            self.register_buffer("whitening", statistics.whitening)

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = normalize(images, self.mean, self.std)
        if self.layers is None:
            return torch.softmax(self.model(x) / self.temperature, dim=1)
        with familiarity.captured(self.model, self.layers) as found:
            logits = self.model(x)
        means, whitening = self.get_buffer("means"), self.get_buffer("whitening")
        distance = familiarity.distance(found[0], means, whitening)
        return torch.softmax(logits / self.temperature, dim=1), distance


def scores(served: ServedModel, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """The class probabilities (N, classes) of a uint8 batch, and the distances (N,) if the
    model has feature statistics."""
    with torch.inference_mode():
        out = served(torch.as_tensor(batch))
    if isinstance(out, tuple):
        return out[0].numpy(), out[1].numpy()
    return out.numpy(), None


def probabilities(
    model: nn.Module, spec: InputSpec, batch: np.ndarray, temperature: float = 1.0
) -> np.ndarray:
    """Class probabilities, softmax(logits / temperature), for a uint8 batch (N, C, H, W) made by
    preprocess.load."""
    return scores(ServedModel(model, spec, temperature), batch)[0]
