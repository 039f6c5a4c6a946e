"""The typed schema of params.yaml: one section per stage, defaults in one place, validated once.

A bad value stops a stage before any work, with one line naming the key, the value and what
is allowed. Values are strict: a number where a flag is expected (`augment: 1`), a flag where a
number is (`epochs: true`), a fraction where a count is, or an infinite or NaN float are refused,
not converted. The whole file is checked by every stage and, first of all, by the check stage
(stages/check.py), before DVC removes any stage's outputs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Final, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails

from cnnpipe.core.architectures import ARCHITECTURES
from cnnpipe.core.errors import CnnpipeError
from cnnpipe.core.outlines import OUTLINES

SHAPES = tuple(OUTLINES)
MODELS = tuple(ARCHITECTURES)

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
# What every random generator used takes (numpy's legacy seed is the narrowest).
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
# a train value taken from the architecture's recipe (cnnpipe.core.architectures)
AUTO: Final = "auto"
Auto = Literal["auto"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class GenerateParams(Section):
    """Where the raw images come from, and how the synthetic shapes look."""

    source: Literal["shapes", "digits", "folder"] = "shapes"
    folder: str = "images"
    # a Literal of names known at import time (the outlines); mypy wants them spelled out
    classes: list[Literal[SHAPES]] = Field(  # type: ignore[valid-type]
        default=["circle", "square", "triangle", "star", "hexagon"], min_length=2
    )
    images_per_class: int = Field(default=500, ge=1)
    image_size: int = Field(default=64, ge=16, le=1024)
    seed: Seed = 0
    min_scale: float = Field(default=0.5, gt=0.0, le=1.0)
    max_scale: float = Field(default=0.9, gt=0.0, le=1.0)
    max_rotation: float = Field(default=90.0, ge=0.0, le=180.0)  # degrees, each direction
    max_offset: Fraction = 0.25
    random_colors: bool = True
    noise: Fraction = 0.15
    clutter: int = Field(default=2, ge=0, le=50)

    @model_validator(mode="after")
    def _scale_range(self) -> GenerateParams:
        if self.min_scale > self.max_scale:
            raise ValueError(
                f"min_scale ({self.min_scale}) is above max_scale ({self.max_scale}); "
                "set min_scale <= max_scale"
            )
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes lists a class twice: {self.classes}; list each once")
        return self


class ProcessParams(Section):
    """How raw images become model-ready tensors and splits."""

    # auto: what the model takes (lenet5: 32) or the images' median short side, at most 64
    image_size: Annotated[int, Field(ge=8, le=1024)] | Auto = AUTO
    channels: Literal[1, 3] | Auto = AUTO  # auto: 3 when the images carry colour, else 1
    val_ratio: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.15
    test_ratio: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.15
    seed: Seed = 0

    @model_validator(mode="after")
    def _ratios(self) -> ProcessParams:
        if self.val_ratio + self.test_ratio >= 1.0:
            raise ValueError(
                f"val_ratio + test_ratio = {self.val_ratio + self.test_ratio:g} leaves no "
                "training data; keep their sum below 1"
            )
        return self


class TrainParams(Section):
    """The model and how it is trained."""

    # a Literal of the architectures' names, known at import time; mypy wants them spelled out
    model: Literal[MODELS] = "lenet5"  # type: ignore[valid-type]
    # a checkpoint to start from: a cnnpipe models/model.pt or a torchvision state dict file;
    # the default, the (empty) folder checkpoints/, means from scratch
    init_from: str = "checkpoints"
    freeze_epochs: int = Field(default=0, ge=0)  # with init_from: train only the new head first
    pretrained: bool = False  # torchvision's ImageNet weights, from $TORCH_HOME or downloaded there
    epochs: Annotated[int, Field(ge=1)] | Auto = AUTO  # the most; early stopping may end sooner
    patience: int = Field(default=0, ge=0)  # stop after this many epochs without a better val
    batch_size: int = Field(default=64, ge=1)
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    learning_rate: Annotated[float, Field(gt=0.0)] | Auto = AUTO
    momentum: Fraction = 0.9  # sgd
    weight_decay: Annotated[float, Field(ge=0.0)] | Auto = AUTO  # decoupled in adamw; not biases
    lr_schedule: Literal["none", "cosine", "step"] = "cosine"
    warmup_epochs: float = Field(default=2.0, ge=0.0)  # linear warmup before the schedule
    step_size: int = Field(default=5, ge=1)  # step schedule: epochs per step
    gamma: float = Field(default=0.1, gt=0.0, le=1.0)  # step schedule: factor per step
    label_smoothing: float = Field(default=0.1, ge=0.0, lt=1.0)
    ema_decay: float = Field(default=0.0, ge=0.0, lt=1.0)  # moving average of the weights; 0: off
    class_weight: Literal["none", "balanced"] = "none"  # balanced: rare classes weigh more
    seed: Seed = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # portable: the bits depend on params and data only (AVX2 kernels on x86-64, num_threads);
    # machine: the fastest kernels this CPU has, bits that depend on it (see core/kernels.py)
    determinism: Literal["portable", "machine"] = "portable"
    num_threads: int = Field(default=2, ge=0)  # CPU threads of the whole training; 0: all cores
    mixed_precision: Literal["none", "bf16"] = "none"
    channels_last: bool = False
    augment: bool = True  # random affine changes (and flips, if `flip`) of each training batch
    max_shift: int = Field(default=2, ge=0, le=64)  # pixels, each direction
    max_rotation: float = Field(default=10.0, ge=0.0, le=180.0)  # degrees, each direction
    max_zoom: float = Field(default=0.1, ge=0.0, lt=1.0)  # scale within 1 +- max_zoom
    # mirror left-right too, with augment; auto: for colour pictures, not for grey ones (digits
    # and text are wrong mirrored)
    flip: bool | Auto = AUTO
    erase: Fraction = 0.25  # probability of erasing a random rectangle of each training image
    # The recipe for pictures (torchvision.transforms.v2), each piece off at 1 / 0 / none:
    # random resized crop: the least share of the picture kept; auto: the architecture's recipe
    crop_scale: Annotated[float, Field(gt=0.0, le=1.0)] | Auto = AUTO
    color_jitter: float = Field(default=0.0, ge=0.0, le=1.0)  # brightness/contrast/saturation +-
    auto_augment: Literal["none", "trivial", "rand"] = "none"  # TrivialAugmentWide, RandAugment
    mixup: float = Field(default=0.0, ge=0.0)  # MixUp's alpha
    cutmix: float = Field(default=0.0, ge=0.0)  # CutMix's alpha
    nproc: int = Field(default=1, ge=1)  # >1: DistributedDataParallel in that many processes
    # keep the whole training state at the end of each epoch (outside DVC's outputs, in
    # .dvc/tmp/cnnpipe/resume/) until the run completes, so that a re-run after a stop goes on
    # from the last complete epoch to the bytes of an uninterrupted run (cnnpipe.train.resume)
    resume: bool = True
    # after training, on the validation split: temperature scaling of the probabilities, and the
    # threshold under which an image is "unknown", set so that this share of images get a label
    calibrate: bool = True
    target_coverage: Annotated[float, Field(gt=0.0, le=1.0)] = 0.97  # 1: every image a label
    # of the validation images left unlabelled, the share refused for features far from every
    # class (the Mahalanobis distance to the nearest class mean of the train split's features),
    # the rest for a low top probability (cnnpipe.model.calibration); 0: no distance rule
    unfamiliar_share: Fraction = 0.5

    @model_validator(mode="after")
    def _fixed_threads(self) -> TrainParams:
        if self.determinism == "portable" and self.num_threads == 0:
            raise ValueError(
                "num_threads 0 (every core) makes the bits depend on the machine; set a thread "
                "count, or determinism: machine"
            )
        return self

    @model_validator(mode="after")
    def _batch_splits(self) -> TrainParams:
        """batch_size is the global batch: each of the nproc processes takes an equal part."""
        if self.batch_size % self.nproc:
            raise ValueError(
                f"batch_size {self.batch_size} does not split evenly over nproc {self.nproc} "
                "processes; set a batch size that is a multiple of the process count"
            )
        return self


class EvaluateParams(Section):
    """What the evaluation reports."""

    batch_size: int = Field(default=256, ge=1)
    max_misclassified: int = Field(default=36, ge=0, le=400)
    # Grad-CAM heat maps of test images: the misclassified first (up to half), then correct ones
    gradcam_images: int = Field(default=24, ge=0, le=400)


class PackageParams(Section):
    """How the trained model is stored and shipped."""

    build: bool = True  # false: only store the model, build and export no bento


class Params(Section):
    generate: GenerateParams = GenerateParams()
    process: ProcessParams = ProcessParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    package: PackageParams = PackageParams()

    @model_validator(mode="after")
    def _image_size_fits_the_model(self) -> Params:
        """Checked with the params, so the process stage refuses a size train would refuse."""
        size, arch = self.process.image_size, ARCHITECTURES[self.train.model]
        if size == AUTO:
            return self
        if arch.fixed_size is not None and size != arch.fixed_size:
            raise ValueError(
                f"process.image_size: {size} does not fit train.model {arch.name}, which takes "
                f"exactly {arch.fixed_size} px; set process.image_size: {arch.fixed_size} or "
                "choose another model"
            )
        if size < arch.min_size:
            raise ValueError(
                f"process.image_size: {size} is below {arch.min_size} px, the smallest input "
                f"train.model {arch.name} takes; set process.image_size to {arch.min_size} or more"
            )
        return self


class ParamsError(CnnpipeError):
    """params.yaml holds a value the schema does not allow."""


def _describe(error: ErrorDetails) -> str:
    loc = error["loc"]
    if len(loc) > 2 and loc[-1] == f"literal[{AUTO!r}]":
        return ""  # the other member of the union (a number, or auto) says it
    member = loc[-1] if len(loc) > 2 and isinstance(loc[-1], str) else ""
    union = bool(member) and (not member.isidentifier() or member in ("bool", "int", "float"))
    if union:  # a member of `number | auto` or `bool | auto`: name the key, and say auto too
        loc = loc[:-1]
    key = ".".join(str(p) for p in loc)
    value = error.get("input")
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        section, _, name = key.rpartition(".")
        allowed = _field_names(section)
        return f"{key}: unknown key {name!r}; allowed keys are {', '.join(allowed)}"
    if kind == "literal_error":
        return f"{key}: {value!r} is not allowed; choose one of {ctx.get('expected', '')}"
    if kind == "value_error":
        message = error["msg"].removeprefix("Value error, ")
        return f"{key}: {message}" if key else message
    message, hint = error["msg"].lower(), _HINTS.get(kind)
    if union and hint:
        hint = f"{hint}, or {AUTO}"
    elif union:
        message = f"{message}, or {AUTO}"
    return f"{key}: {_shown(value)} is invalid ({message})" + (f"; {hint}" if hint else "")


_HINTS = {
    "int_type": "write a whole number, such as 3",
    "bool_type": "write true or false",
    "float_type": "write a number, such as 0.5",
    "finite_number": "write a finite number",
    "string_type": "write text in quotes",
    "list_type": "write a list, such as [a, b]",
}


def _shown(value: object) -> str:
    """A value as it is written in params.yaml."""
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value)


def _field_names(dotted: str) -> list[str]:
    model: type[BaseModel] = Params
    for part in filter(None, dotted.split(".")):
        annotation = model.model_fields[part].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def parse(raw: dict | None) -> Params:
    """Validate a params mapping; raise ParamsError naming every bad key."""
    try:
        return Params.model_validate(raw or {})
    except ValidationError as exc:
        lines = list(filter(None, (_describe(e) for e in exc.errors())))
        raise ParamsError("params.yaml: " + "; ".join(lines)) from None


class _Yaml12Loader(yaml.SafeLoader):
    """YAML as DVC reads and writes it (1.2, not PyYAML's 1.1): `1e-06` (what
    `dvc exp run -S x=1e-6` writes) is a float, and only true and false are booleans (`yes`, `on`
    are words to DVC, and so to the schema)."""


_BOOL = "tag:yaml.org,2002:bool"
_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_yaml(path: Path) -> object:
    """A YAML file as DVC reads it (floats in exponent form included)."""
    return yaml.load(path.read_text(), Loader=_Yaml12Loader)  # noqa: S506 (a SafeLoader)


def load(path: Path | None = None) -> Params:
    """Read and validate params.yaml (the one in the current directory unless a path is given)."""
    path = path or Path("params.yaml")
    try:
        raw = read_yaml(path)
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found; run the stage from the project root") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({exc}); fix the syntax") from None
    if raw is not None and not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    return parse(raw)
