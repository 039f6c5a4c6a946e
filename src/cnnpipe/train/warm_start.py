"""Starting from weights on disk (`train.init_from`), offline: a cnnpipe checkpoint from another
run or source, or a torchvision-format state dict (`torch.save(model.state_dict(), path)`, e.g.
ImageNet weights downloaded elsewhere).

The head gets the new classes (a fresh layer, unless a cnnpipe checkpoint already has exactly
these classes), the first convolution is adapted to the input channels (RGB filters summed for
greyscale), and everything else must fit the architecture tensor for tensor.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cnnpipe.core.errors import CnnpipeError
from cnnpipe.model.registry import adapt_filters, first_conv_name, head_name

KINDS = "a cnnpipe models/model.pt or a state dict saved with torch.save(model.state_dict(), path)"


def read_weights(path: Path, architecture: str) -> tuple[dict[str, torch.Tensor], list | None]:
    """The state dict a file holds and, for a cnnpipe checkpoint, its classes; one CnnpipeError
    naming the problem for a file that is missing, unreadable or of another architecture."""
    if not path.is_file():
        raise CnnpipeError(f"train.init_from: {path} is not a file; point it at {KINDS}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip or torch errors: the file is not a checkpoint
        reason = str(exc).splitlines()[0][:200]
        raise CnnpipeError(
            f"train.init_from: {path} cannot be read as weights ({reason}); point it at {KINDS}"
        ) from None
    if isinstance(data, dict) and "state_dict" in data and "architecture" in data:
        if data["architecture"] != architecture:
            raise CnnpipeError(
                f"train.init_from: {path} holds a {data['architecture']} model but train.model "
                f"is {architecture}; set train.model: {data['architecture']} or start from a "
                f"{architecture} checkpoint"
            )
        return data["state_dict"], list(data.get("classes") or [])
    if isinstance(data, dict) and data and all(isinstance(v, torch.Tensor) for v in data.values()):
        return data, None
    raise CnnpipeError(f"train.init_from: {path} holds no state dict; point it at {KINDS}")


def load_initial_weights(
    model: nn.Module, path: Path, architecture: str, classes: list[str]
) -> str:
    """Copy the weights in `path` into `model` (built for `classes` and its input channels);
    returns what was done, in one line."""
    state, their_classes = read_weights(path, architecture)
    target = model.state_dict()
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    if missing or unexpected:
        raise CnnpipeError(
            f"train.init_from: {path} does not fit {architecture}: {len(missing)} of its "
            f"{len(target)} tensors are missing from the file (e.g. {missing[:2]}) and "
            f"{len(unexpected)} in the file are not in the model (e.g. {unexpected[:2]}); start "
            f"from {architecture} weights or set train.model to the file's architecture"
        )
    head, stem = head_name(model) + ".", first_conv_name(model) + ".weight"
    keep_head = their_classes == classes
    loaded, notes = {}, []
    for key, value in state.items():
        if key.startswith(head) and not keep_head:
            continue
        if key == stem and value.shape != target[key].shape:
            value = adapt_filters(value, target[key].shape[1])
            notes.append(f"first convolution adapted from {state[key].shape[1]} channel(s)")
        if value.shape != target[key].shape:
            raise CnnpipeError(
                f"train.init_from: {path} does not fit this {architecture}: {key} is "
                f"{tuple(value.shape)} in the file but {tuple(target[key].shape)} in the model"
            )
        loaded[key] = value
    model.load_state_dict({**target, **loaded})
    notes.append(
        "head kept (same classes)" if keep_head else f"new head for {len(classes)} classes"
    )
    kind = "cnnpipe checkpoint" if their_classes is not None else "state dict"
    return f"started from {path} ({kind}, {len(loaded)} tensors; {', '.join(notes)})"
