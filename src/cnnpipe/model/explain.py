"""Why the model decided: Grad-CAM heat maps (Selvaraju et al., 2017) computed by captum.

Grad-CAM weighs each channel of a convolutional layer's output by the mean gradient of the class
score over it, sums the channels, keeps the positive part (captum's `relu_attributions=True`, as
in the paper) and upsamples the map to the input. It is usually taken at the last convolutional
stage; here at the last one whose output map is at least MIN_MAP pixels on a side for the
model's input size (target_layer), because the last stage of a ResNet or DenseNet on 32 px
images outputs 1x1, a map that says nothing about where. The evaluation draws these maps over
test images, and the service's /explain over an upload.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from captum.attr import LayerAttribution, LayerGradCam
from matplotlib import colormaps
from PIL import Image
from torch import nn

from cnnpipe.core.dataset import InputSpec
from cnnpipe.core.preprocess import normalize

MIN_MAP = 4  # pixels on a side of the convolution output Grad-CAM is taken at
OVERLAY_SIZE = 256  # pixels on a side of an overlay image
HEAT_ALPHA = 0.45  # the heat map's weight over the image
COLORMAP = "jet"


def target_layer(model: nn.Module, spec: InputSpec) -> nn.Module:
    """The layer Grad-CAM is taken at: of the stages of the feature extractor (the children of
    `model.features` where the model has one, else of the model) that are convolutions or blocks
    (a block's output includes its shortcut), the last whose output map is at least MIN_MAP x
    MIN_MAP on this model's input; else the first convolution."""
    extractor = getattr(model, "features", model)
    stages = [m for m in extractor.children() if isinstance(m, nn.Conv2d) or any(m.children())]
    shapes: dict[nn.Module, tuple[int, ...]] = {}

    def record(module: nn.Module, _: object, out: torch.Tensor) -> None:
        shapes.setdefault(module, tuple(out.shape))

    hooks = [stage.register_forward_hook(record) for stage in stages]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros((1, spec.channels, spec.image_size, spec.image_size)))
    finally:
        for hook in hooks:
            hook.remove()
    large = [m for m in stages if len(shapes.get(m, ())) == 4 and min(shapes[m][-2:]) >= MIN_MAP]
    if large:
        return large[-1]
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def heatmaps(
    model: nn.Module, spec: InputSpec, images: np.ndarray, targets: list[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM maps (N, H, W) in [0, 1] (each scaled by its own maximum) of uint8 images
    (N, C, H, W) for the target classes (default: each image's predicted class), and the
    classes explained."""
    model.eval()
    device = next(model.parameters()).device
    x = normalize(torch.as_tensor(np.ascontiguousarray(images)).to(device), spec.mean, spec.std)
    if targets is None:
        with torch.no_grad():
            targets = model(x).argmax(1).tolist()
    gradcam = LayerGradCam(model, target_layer(model, spec))
    maps = gradcam.attribute(x, target=targets, relu_attributions=True).detach()
    maps = LayerAttribution.interpolate(maps, tuple(x.shape[-2:]), interpolate_mode="bilinear")
    maps = maps[:, 0].clamp(min=0)
    peaks = maps.flatten(1).amax(1).clamp(min=1e-12).view(-1, 1, 1)
    return (maps / peaks).cpu().numpy(), np.asarray(targets)


def overlay(pixels: np.ndarray, heatmap: np.ndarray, size: int = OVERLAY_SIZE) -> Image.Image:
    """The model input (uint8 C, H, W) enlarged to size x size, the heat map coloured over it."""
    image = Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0))
    base = np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
    heat = Image.fromarray(np.uint8(np.clip(heatmap, 0, 1) * 255))
    enlarged = np.asarray(heat.resize((size, size), Image.Resampling.BILINEAR)) / 255.0
    colour = colormaps[COLORMAP](enlarged)[..., :3] * 255
    blended = (1 - HEAT_ALPHA) * base + HEAT_ALPHA * colour
    return Image.fromarray(np.uint8(np.clip(blended.round(), 0, 255)))


def explain_png(model: nn.Module, spec: InputSpec, pixels: np.ndarray) -> tuple[bytes, int]:
    """A PNG of the Grad-CAM overlay of one model input (uint8 C, H, W) for its predicted class,
    and that class."""
    maps, targets = heatmaps(model, spec, pixels[None])
    buffer = io.BytesIO()
    overlay(pixels, maps[0]).save(buffer, "PNG")
    return buffer.getvalue(), int(targets[0])
