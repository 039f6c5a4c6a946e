"""The model as ONNX: one graph from uint8 images to calibrated class probabilities
(normalisation, model, softmax of the logits over the temperature) and, where the checkpoint has
feature statistics, the distance to the nearest class, checked against torch before it is
packaged.

The graph carries no copy of the weights. torch.save writes its zip archive uncompressed, each
tensor's bytes whole at an aligned offset, and ONNX's external data (a file, an offset, a length)
can point there: each weight of the graph is read from the checkpoint, which lies beside the
graph under its own name (cnnpipe.model.files). So the weights are exported as the state dict
holds them, batch norms unfused (onnxruntime fuses them when it loads the graph).
"""

from __future__ import annotations

import hashlib
import io
import struct
import warnings
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from torch import nn

from cnnpipe.core.dataset import InputSpec
from cnnpipe.model.familiarity import FeatureStatistics
from cnnpipe.model.inference import ServedModel, scores

# Opset 17 covers every layer of the four architectures (LeNet-5's average pools, ResNet's and
# DenseNet's batch norms and adaptive pools, EfficientNet's SiLU and squeeze-excitation) and
# every onnxruntime since 1.13.
OPSET = 17
INPUT, OUTPUT, DISTANCE = "images", "probabilities", "distance"


def export_onnx(
    model: nn.Module,
    spec: InputSpec,
    checkpoint_file: Path,
    temperature: float = 1.0,
    statistics: FeatureStatistics | None = None,
) -> bytes:
    """The ONNX graph of ServedModel, with a dynamic batch dimension, its weights read from
    `checkpoint_file` (the model's checkpoint, to lie beside the graph under that name). With
    feature statistics it has a second output, DISTANCE (cnnpipe.model.familiarity)."""
    outputs = [OUTPUT, DISTANCE] if statistics is not None else [OUTPUT]
    example = torch.zeros((2, spec.channels, spec.image_size, spec.image_size), dtype=torch.uint8)
    exported = io.BytesIO()
    # The TorchScript exporter (dynamo=False) needs no onnxscript and exports all four
    # architectures exactly; torch warns that it is deprecated. PRESERVE exports the wrapper in
    # its eval mode without folding batch norms into convolutions, and no constant folding keeps
    # every initializer a tensor of the state dict.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        torch.onnx.export(
            # eval: the exporter restores the wrapper's mode
            ServedModel(model, spec, temperature, statistics).eval(),
            (example,),
            exported,  # type: ignore[arg-type]  # a file object works; the annotation omits it
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT],
            output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in (INPUT, *outputs)},
            training=torch.onnx.TrainingMode.PRESERVE,
            do_constant_folding=False,
        )
    graph = onnx.load_from_string(exported.getvalue())
    stored = stored_tensors(checkpoint_file)
    for tensor in graph.graph.initializer:
        found = stored.get(hashlib.sha256(tensor.raw_data).digest()) if tensor.raw_data else None
        if found is None:  # not in the checkpoint (a constant the exporter made): stays inline
            continue
        offset, length = found
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        del tensor.external_data[:]
        for key, value in (
            ("location", checkpoint_file.name),
            ("offset", offset),
            ("length", length),
        ):
            tensor.external_data.add(key=key, value=str(value))
    return graph.SerializeToString()


LOCAL_HEADER_BYTES = 30  # a zip entry's local file header, before its name (APPNOTE 4.3.7)


def stored_tensors(checkpoint_file: Path) -> dict[bytes, tuple[int, int]]:
    """{sha256 of the bytes: (offset, length)} of each tensor storage that torch.save stored
    uncompressed in the checkpoint's zip archive."""
    found: dict[bytes, tuple[int, int]] = {}
    with zipfile.ZipFile(checkpoint_file) as archive, open(checkpoint_file, "rb") as f:
        for entry in archive.infolist():
            if "/data/" not in entry.filename or entry.compress_type != zipfile.ZIP_STORED:
                continue
            # the entry's local header (its last two fields: the lengths of the name and of the
            # extra field that follow it), then the data
            f.seek(entry.header_offset)
            header = f.read(LOCAL_HEADER_BYTES)
            name_length, extra_length = struct.unpack("<HH", header[-4:])
            offset = entry.header_offset + LOCAL_HEADER_BYTES + name_length + extra_length
            f.seek(offset)
            digest = hashlib.sha256(f.read(entry.file_size)).digest()
            found.setdefault(digest, (offset, entry.file_size))
    return found


def max_difference(
    path: Path,
    model: nn.Module,
    spec: InputSpec,
    images: np.ndarray,
    batch_size: int = 256,
    temperature: float = 1.0,
    statistics: FeatureStatistics | None = None,
) -> tuple[float, float]:
    """The largest absolute difference between the class probabilities of the ONNX export (run
    by onnxruntime) and of the torch model at this temperature, over uint8 images, and the
    largest relative difference of their distances (0 without statistics)."""
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    served = ServedModel(model, spec, temperature, statistics).eval()
    worst, worst_distance = 0.0, 0.0
    for start in range(0, len(images), batch_size):
        batch = np.array(images[start : start + batch_size])  # a memory map slice is read-only
        exported = session.run(None, {INPUT: batch})
        expected, distance = scores(served, batch)
        worst = max(worst, float(np.abs(exported[0] - expected).max()))
        if distance is not None:
            gap = np.abs(exported[1] - distance) / np.maximum(np.abs(distance), 1.0)
            worst_distance = max(worst_distance, float(gap.max()))
    return worst, worst_distance
