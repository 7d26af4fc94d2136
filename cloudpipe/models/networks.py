"""Models by name: the presence classifier (any torchvision classification model, or any timm
model as ``timm:<name>``) and smp segmentation models (smp's encoders, or timm's as ``tu-<name>``).

Every model is wrapped in :class:`Normalized`, which takes uint8 NCHW (or NHWC-permuted,
channels_last) batches and normalises them on the device. A checkpoint's saved config is enough
to rebuild the network (:mod:`cloudpipe.engine.infer`, :class:`~cloudpipe.engine.stages.Stage`).
"""

from __future__ import annotations

import difflib
import hashlib
from pathlib import Path

import torch
import torchvision
from torch import nn

from cloudpipe.core.competition import CLASSES, IMAGENET_MEAN, IMAGENET_STD
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.data.outputs import no_new_empty_folders
from cloudpipe.models.tiny import TinyClassifier, TinySegmenter

TINY = "tiny"
"""The arch name of the stand-ins for tests and smoke runs (:mod:`cloudpipe.models.tiny`)."""
TIMM_CLASSIFIER = "timm:"
"""Prefix of a classifier arch that is a timm model (``timm:efficientnet_b1``)."""
TIMM_ENCODER = "tu-"
"""Prefix of an smp encoder that is a timm model (smp's own spelling: ``tu-efficientnet_b1``)."""
TINY_SEGMENTER = TINY
"""The segmentation arch name of :class:`~cloudpipe.models.tiny.TinySegmenter` (any encoder)."""
_IMAGENET_WEIGHTS = {
    "resnet18": torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
    "resnet34": torchvision.models.ResNet34_Weights.IMAGENET1K_V1,
    "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
}


class Normalized(nn.Module):
    """``body((x / 255 - mean) / std)`` for uint8 image batches (N, 3, H, W)."""

    def __init__(self, body: nn.Module, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.body = body
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(std).view(1, 3, 1, 1)))
        self.register_buffer("shift", -torch.tensor(mean).view(1, 3, 1, 1) / torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images.float() * self.scale + self.shift)


def _load_state(module: nn.Module, path: Path, what: str) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CloudpipeError("weights file not found", path=path) from None
    except Exception as err:  # unpickling errors have many types
        raise CloudpipeError(f"cannot read weights ({type(err).__name__})", path=path) from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    try:
        module.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        first = str(err).strip().splitlines()
        raise CloudpipeError(f"not a state dict of a {what}: {first[1].strip() if len(first) > 1 else first[0]}", path=path) from None


def _torchvision_url(arch: str) -> str:
    """The URL of torchvision's ImageNet weights of ``arch`` (the ResNets' first release, as
    before; else torchvision's default weights)."""
    if arch in _IMAGENET_WEIGHTS:
        return _IMAGENET_WEIGHTS[arch].url
    try:
        return torchvision.models.get_model_weights(arch).DEFAULT.url
    except (ValueError, KeyError, AttributeError):
        raise CloudpipeError(f"classifier arch {arch!r} has no ImageNet weights in torchvision; pass --weights none or PATH") from None


def torchvision_imagenet_state(arch: str) -> dict:
    """torchvision's ImageNet state dict of a ResNet: from the local torch cache
    (``$TORCH_HOME/hub/checkpoints/<file>``), checked against the sha256 prefix in its file name,
    else downloaded (hash-checked) where a network exists.

    Raises:
        CloudpipeError: a cached file that is not the real weights, or no file and no network,
            naming the file to place and where.
    """
    url = _torchvision_url(arch)
    file = Path(url).name
    cache = Path(torch.hub.get_dir()) / "checkpoints" / file
    named = torch.hub.HASH_REGEX.search(file)
    if cache.is_file() and named:
        expected = named.group(1)
        digest = hashlib.sha256(cache.read_bytes()).hexdigest()
        if not digest.startswith(expected):
            raise CloudpipeError(f"not torchvision's {arch} ImageNet weights (sha256 {digest[:8]}..., expected {expected}...); "
                                 f"replace it with the real {file}", path=cache)
    try:
        with no_new_empty_folders(cache.parent):  # a failed offline attempt leaves no empty cache folder
            return torch.hub.load_state_dict_from_url(url, progress=False, check_hash=True, weights_only=True)
    except Exception as err:  # URLError, socket errors, a download that fails its hash...
        raise CloudpipeError(
            f"cannot load ImageNet weights for {arch} ({type(err).__name__}): place {file} at {cache}, "
            "or pass --weights PATH (a local state dict) or --weights none"
        ) from None


def smp_imagenet_state(encoder: str) -> dict:
    """ImageNet weights of an smp encoder, offline first: torchvision's file in the torch cache
    for the ResNets (smp's ResNet encoders are torchvision ResNets without ``fc``), else smp's
    own file in the Hugging Face cache, else a download where a network exists.

    Raises:
        CloudpipeError: none of these worked, naming what to place where.
    """
    if encoder in _IMAGENET_WEIGHTS and (Path(torch.hub.get_dir()) / "checkpoints" / Path(_IMAGENET_WEIGHTS[encoder].url).name).is_file():
        return {k: v for k, v in torchvision_imagenet_state(encoder).items() if not k.startswith("fc.")}
    import segmentation_models_pytorch as smp
    from huggingface_hub import hf_hub_download
    from safetensors.torch import load_file

    settings = smp.encoders.encoders[encoder]["pretrained_settings"].get("imagenet")
    if settings is None:
        raise CloudpipeError(f"encoder {encoder!r} has no ImageNet weights; pass --weights none or PATH")
    for offline in (True, False):
        try:
            path = hf_hub_download(settings["repo_id"], filename="model.safetensors", revision=settings["revision"],
                                   local_files_only=offline)
            return load_file(path, device="cpu")
        except Exception as err:  # not cached / no network / a broken file
            reason = type(err).__name__
    torch_file = f" or torchvision's {Path(_IMAGENET_WEIGHTS[encoder].url).name} in {Path(torch.hub.get_dir()) / 'checkpoints'}" \
        if encoder in _IMAGENET_WEIGHTS else ""
    raise CloudpipeError(f"cannot load ImageNet weights for encoder {encoder} ({reason}): place smp's {settings['repo_id']} "
                         f"in the Hugging Face cache{torch_file}, or pass --weights PATH (a local encoder state dict) or --weights none")


def timm_imagenet_state(name: str) -> dict:
    """The ImageNet state dict of timm model ``name`` (its default pretrained tag), offline
    first: the Hugging Face cache, else a download where a network exists.

    Raises:
        CloudpipeError: no pretrained weights, or none of these worked, naming what to place where.
    """
    import timm
    from huggingface_hub import hf_hub_download

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not cfg.hf_hub_id:
        raise CloudpipeError(f"timm model {name!r} has no ImageNet weights on the Hugging Face hub; pass --weights none or PATH")
    reason = "not found"
    for offline in (True, False):
        for filename in ("model.safetensors", "pytorch_model.bin"):
            try:
                path = hf_hub_download(cfg.hf_hub_id, filename=filename, local_files_only=offline)
            except Exception as err:  # not cached / no network / no such file
                reason = type(err).__name__
                continue
            if filename.endswith(".safetensors"):
                from safetensors.torch import load_file

                return load_file(path, device="cpu")
            return torch.load(path, map_location="cpu", weights_only=True)
    raise CloudpipeError(f"cannot load ImageNet weights for timm {name} ({reason}): place {cfg.hf_hub_id} "
                         "(model.safetensors) in the Hugging Face cache, or pass --weights PATH (a local state dict) or --weights none")


def _choose(kind: str, name: str, known: list[str], examples: str) -> CloudpipeError:
    """The one-line refusal of an unknown name, with its close matches or examples."""
    close = difflib.get_close_matches(name, known, n=4, cutoff=0.6)
    return CloudpipeError(f"unknown {kind} {name!r}; " + (f"did you mean {', '.join(close)}?" if close else f"e.g. {examples}"))


def torchvision_classifiers() -> list[str]:
    """The names of torchvision's classification models (``resnet34``, ``efficientnet_b0``, ...)."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def build_classifier(arch: str, weights: str = "none", freeze: list[str] | tuple[str, ...] = ()) -> nn.Module:
    """A classification network with its last linear layer replaced by a 4-output one; the
    returned :class:`Normalized` names that layer in ``head`` (``fc`` for a ResNet).

    Args:
        arch: a torchvision classification model (``resnet34``, ``efficientnet_b0``, ...),
            ``timm:<name>`` (any timm model), or ``tiny`` (a stand-in for tests).
        weights: ``imagenet`` (torchvision's file in the torch cache, see
            :func:`torchvision_imagenet_state`; timm's in the Hugging Face cache, see
            :func:`timm_imagenet_state`), ``none``, or a path to a state dict of that model.
        freeze: submodule names (e.g. ``layer1``) whose parameters stay fixed.
    """
    if arch == TINY:
        if weights == "imagenet":
            raise CloudpipeError(f"classifier arch {arch!r} has no ImageNet weights; pass --weights none or PATH")
        net, what = TinyClassifier(), f"{arch} classifier"
    elif arch.startswith(TIMM_CLASSIFIER):
        import timm

        name = arch.removeprefix(TIMM_CLASSIFIER)
        if not timm.is_model(name):
            raise _choose("timm model", name, timm.list_models(), "timm:resnet34, timm:efficientnet_b1, timm:inception_resnet_v2")
        net, what = timm.create_model(name, pretrained=False), f"timm {name}"
        if weights == "imagenet":
            net.load_state_dict(timm_imagenet_state(name))
    else:
        if arch not in torchvision_classifiers():
            raise _choose("classifier arch", arch, torchvision_classifiers(),
                          "resnet18, resnet34, resnet50, efficientnet_b0 (torchvision) or timm:<name>")
        net, what = torchvision.models.get_model(arch, weights=None), f"torchvision {arch}"
        if weights == "imagenet":
            net.load_state_dict(torchvision_imagenet_state(arch))
    if weights not in ("imagenet", "none"):
        _load_state(net, Path(weights), what)
    head = [name for name, module in net.named_modules() if isinstance(module, nn.Linear)][-1]
    parent, _, last = head.rpartition(".")
    setattr(net.get_submodule(parent), last, nn.Linear(net.get_submodule(head).in_features, len(CLASSES)))
    _freeze(net, freeze)
    model = Normalized(net)
    model.head = head
    return model


def build_segmenter(arch: str, encoder: str, weights: str = "none", freeze: list[str] | tuple[str, ...] = (),
                    head_dropout: float | None = None) -> nn.Module:
    """An smp model with one sigmoid channel per class.

    Args:
        arch: smp architecture name (``Unet``, ``FPN``, ...).
        encoder: smp encoder name (``resnet34``, ...).
        weights: ``imagenet`` (see :func:`smp_imagenet_state`), ``none``, or a path to an encoder state dict.
        freeze: submodule names (e.g. ``encoder``) whose parameters stay fixed.
        head_dropout: None for masks alone; else a classification head on the encoder with
            this dropout (smp's ``aux_params``), and the model returns ``(masks, labels)``.
    """
    if arch.lower() == TINY_SEGMENTER:
        if weights != "none":
            raise CloudpipeError(f"segmentation arch {arch!r} is a stand-in without pretrained weights; pass --weights none")
        net = TinySegmenter(len(CLASSES), head_dropout=head_dropout)
        _freeze(net, freeze)
        return Normalized(net)
    import segmentation_models_pytorch as smp

    archs = {name.lower(): cls.__name__ for name, cls in smp.MODEL_ARCHITECTURES_MAPPING.items()}
    if arch.lower() not in archs:
        raise CloudpipeError(f"unknown segmentation arch {arch!r}; choose one of {', '.join(sorted(archs.values()))} "
                              f"(or {TINY_SEGMENTER}, a stand-in for tests)")
    if encoder.startswith(TIMM_ENCODER):
        import timm

        if not timm.is_model(encoder.removeprefix(TIMM_ENCODER)):
            raise _choose(f"timm encoder ({TIMM_ENCODER}<name>)", encoder.removeprefix(TIMM_ENCODER), timm.list_models(),
                          "efficientnet_b1, resnext50_32x4d, inception_resnet_v2")
    elif encoder not in smp.encoders.get_encoder_names():
        raise _choose("encoder", encoder, smp.encoders.get_encoder_names(),
                      f"resnet18, resnet34, resnet50, efficientnet-b0 (smp's) or {TIMM_ENCODER}<any timm model>")
    try:
        aux = None if head_dropout is None else {"classes": len(CLASSES), "dropout": head_dropout}
        net = smp.create_model(arch, encoder_name=encoder, encoder_weights=None, classes=len(CLASSES), aux_params=aux)
    except (KeyError, ValueError) as err:
        raise CloudpipeError(f"cannot build {arch} with encoder {encoder}: {err}") from None
    if weights == "imagenet" and encoder.startswith(TIMM_ENCODER):
        _load_timm_encoder(net.encoder, encoder.removeprefix(TIMM_ENCODER))
    elif weights == "imagenet":
        net.encoder.load_state_dict(smp_imagenet_state(encoder))
    if weights not in ("imagenet", "none"):
        _load_state(net.encoder, Path(weights), f"{encoder} encoder")
    _freeze(net, freeze)
    return Normalized(net)


def _load_timm_encoder(encoder: nn.Module, name: str) -> None:
    """timm's ImageNet weights into smp's ``tu-`` encoder (timm's feature extractor, which
    keeps the classifier's layer names and drops its head)."""
    state, wanted = timm_imagenet_state(name), encoder.model.state_dict()
    missing = [k for k in wanted if k not in state]
    if missing:
        raise CloudpipeError(f"timm's {name} ImageNet weights lack {len(missing)} of the encoder's tensors (e.g. {missing[0]})")
    encoder.model.load_state_dict({k: state[k] for k in wanted})


def _freeze(net: nn.Module, names: list[str] | tuple[str, ...]) -> None:
    modules = dict(net.named_children())
    for name in names:
        if name not in modules:
            raise CloudpipeError(f"config: freeze names {name!r}, which is not a submodule; choose from {', '.join(modules)}")
        for p in modules[name].parameters():
            p.requires_grad_(False)
