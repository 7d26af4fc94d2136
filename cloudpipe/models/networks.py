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

from cloudpipe.core.constants import IMAGENET_MEAN, IMAGENET_STD
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.core.profile import active
from cloudpipe.data.outputs import no_new_empty_folders
from cloudpipe.models.tiny import TinyClassifier, TinySegmenter

TINY = "tiny"
"""The arch name of the stand-ins for tests and smoke runs (:mod:`cloudpipe.models.tiny`), with any encoder."""
TIMM_CLASSIFIER = "timm:"
"""Prefix of a classifier arch that is a timm model (``timm:efficientnet_b1``)."""
TIMM_ENCODER = "tu-"
"""Prefix of an smp encoder that is a timm model (smp's own spelling: ``tu-efficientnet_b1``)."""
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


WEIGHTS_OPTION = {"classifier": "--weights", "segmentation": "--encoder-weights"}
"""The training option each stage's ImageNet weights come from, named in the offline error."""
PROBE_SECONDS = 5
"""How long the one request that tells whether a server of weights answers may take."""


def unreachable(url: str) -> str | None:
    """Why the server of ``url`` cannot be asked for a file now, or None when it answers: one
    request (HEAD, the environment's proxies), no retries, nothing printed."""
    import urllib.error
    import urllib.request
    from urllib.parse import urlsplit

    host = urlsplit(url).netloc
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=PROBE_SECONDS) as response:
            status = response.status
    except urllib.error.HTTPError as err:  # it answered, if only with an error status
        status = err.code
    except Exception as err:  # no network, no name resolution, a refused or timed-out connection
        return f"{host} does not answer: {type(err).__name__}"
    return f"{host} answers {status}" if status >= 500 else None


def _torch_cache(url: str) -> Path:
    """Where torch's cache keeps the file of ``url`` (``$TORCH_HOME/hub/checkpoints/<file>``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


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
    cache = _torch_cache(url)
    file = cache.name
    named = torch.hub.HASH_REGEX.search(file)
    if cache.is_file() and named:
        expected = named.group(1)
        digest = hashlib.sha256(cache.read_bytes()).hexdigest()
        if not digest.startswith(expected):
            raise CloudpipeError(f"not torchvision's {arch} ImageNet weights (sha256 {digest[:8]}..., expected {expected}...); "
                                 f"replace it with the real {file}", path=cache)
    reason = None if cache.is_file() else unreachable(url)  # offline: no "Downloading: ..." line before the error
    if reason is None:
        try:
            with no_new_empty_folders(cache.parent):  # a failed attempt leaves no empty cache folder
                return torch.hub.load_state_dict_from_url(url, progress=False, check_hash=True, weights_only=True)
        except Exception as err:  # URLError, socket errors, a download that fails its hash...
            reason = type(err).__name__
    option = WEIGHTS_OPTION["classifier"]
    raise CloudpipeError(f"cannot load ImageNet weights for {arch} ({reason}): place {file} at {cache}, "
                         f"or pass {option} PATH (a local state dict) or {option} none")


def hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be asked for a file now, or None when it answers:
    ``HF_HUB_OFFLINE`` set, or :func:`unreachable` (offline, ``hf_hub_download`` would retry each
    file for ~30 s, "Retrying in 8s")."""
    from huggingface_hub import constants

    return "HF_HUB_OFFLINE is set" if constants.is_offline_mode() else unreachable(constants.ENDPOINT)


def hub_state(repo_id: str, filenames: tuple[str, ...], revision: str | None, what: str, option: str,
              elsewhere: str = "") -> dict:
    """A state dict from the first of ``filenames`` that Hugging Face repo ``repo_id`` holds,
    offline first: the Hugging Face cache (no network), else, when the hub answers at once
    (:func:`hub_unreachable`), a download. For the message: ``what`` owns the weights
    (``encoder resnet34``), ``option`` chooses them (:data:`WEIGHTS_OPTION`), ``elsewhere`` is
    another place they may be put.

    Raises:
        CloudpipeError: not cached and the hub unreachable (or the download failing): one line
            naming the file to place where, or ``option PATH`` / ``option none`` instead.
    """
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError

    cached = (try_to_load_from_cache(repo_id, filename, revision=revision) for filename in filenames)  # no network
    path = next((found for found in cached if isinstance(found, str)), None)
    if path is None and (reason := hub_unreachable()) is None:
        for filename in filenames:
            try:
                path = hf_hub_download(repo_id, filename=filename, revision=revision)
                break
            except EntryNotFoundError:  # the repo holds another of the file names
                reason = f"{repo_id} has no {filename}"
            except Exception as err:  # a download that fails though the hub answered
                reason = type(err).__name__
                break
    if path is None:
        folder = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
        pinned = revision is not None and len(revision) == 40  # a commit: its snapshot folder is known
        place = folder / "snapshots" / revision / filenames[0] if pinned else folder
        fetch = f"hf download {repo_id} {filenames[0]}" + (f" --revision {revision}" if revision else "")
        raise CloudpipeError(f"cannot load ImageNet weights for {what} ({reason}): place {repo_id}'s {filenames[0]} "
                             f"{'at' if pinned else 'in'} {place} (`{fetch}` fetches it into that cache where a network "
                             f"exists){elsewhere}, or pass {option} PATH (a local state dict) or {option} none")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path, device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: many error types
        raise CloudpipeError(f"cannot read {what}'s ImageNet weights ({type(err).__name__}): replace the file with "
                             f"{repo_id}'s {Path(path).name}, or pass {option} PATH or {option} none", path=path) from None


def smp_imagenet_state(encoder: str) -> dict:
    """ImageNet weights of an smp encoder, offline first: torchvision's file in the torch cache
    for the ResNets (smp's ResNet encoders are torchvision ResNets without ``fc``), else smp's
    own file from the Hugging Face hub (:func:`hub_state`: its cache, else a download where the
    hub answers); when none works, a CloudpipeError naming what to place where.
    """
    option = WEIGHTS_OPTION["segmentation"]
    torch_file = _torch_cache(_IMAGENET_WEIGHTS[encoder].url) if encoder in _IMAGENET_WEIGHTS else None
    if torch_file is not None and torch_file.is_file():
        return {k: v for k, v in torchvision_imagenet_state(encoder).items() if not k.startswith("fc.")}
    import segmentation_models_pytorch as smp

    settings = smp.encoders.encoders[encoder]["pretrained_settings"].get("imagenet")
    if settings is None:
        raise CloudpipeError(f"encoder {encoder!r} has no ImageNet weights; pass {option} none or PATH")
    elsewhere = f" or torchvision's {torch_file.name} in {torch_file.parent}" if torch_file is not None else ""
    return hub_state(settings["repo_id"], ("model.safetensors",), settings["revision"], f"encoder {encoder}", option, elsewhere)


def timm_imagenet_state(name: str, option: str) -> dict:
    """The ImageNet state dict of timm model ``name`` (its default pretrained tag), offline
    first (:func:`hub_state`, ``option`` asking for them); a model with no pretrained weights
    is a CloudpipeError."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not cfg.hf_hub_id:
        raise CloudpipeError(f"timm model {name!r} has no ImageNet weights on the Hugging Face hub; pass {option} none or PATH")
    return hub_state(cfg.hf_hub_id, ("model.safetensors", "pytorch_model.bin"), None, f"timm {name}", option)


def _choose(kind: str, name: str, known: list[str], examples: str) -> CloudpipeError:
    """The one-line refusal of an unknown name, with its close matches or examples."""
    close = difflib.get_close_matches(name, known, n=4, cutoff=0.6)
    return CloudpipeError(f"unknown {kind} {name!r}; " + (f"did you mean {', '.join(close)}?" if close else f"e.g. {examples}"))


def build_classifier(arch: str, weights: str = "none", freeze: list[str] | tuple[str, ...] = ()) -> nn.Module:
    """A classification network (``arch``: a torchvision classification model, ``timm:<name>``, or
    ``tiny``) with its last linear layer replaced by a 4-output one; the returned
    :class:`Normalized` names that layer in ``head`` (``fc`` for a ResNet). ``weights``:
    ``imagenet`` (:func:`torchvision_imagenet_state`, :func:`timm_imagenet_state`), ``none``, or
    a path to a state dict of that model; ``freeze``: submodule names (``layer1``) kept fixed."""
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
            net.load_state_dict(timm_imagenet_state(name, WEIGHTS_OPTION["classifier"]))
    else:
        known = sorted(torchvision.models.list_models(module=torchvision.models))  # classification models only
        if arch not in known:
            raise _choose("classifier arch", arch, known,
                          "resnet18, resnet34, resnet50, efficientnet_b0 (torchvision) or timm:<name>")
        net, what = torchvision.models.get_model(arch, weights=None), f"torchvision {arch}"
        if weights == "imagenet":
            net.load_state_dict(torchvision_imagenet_state(arch))
    if weights not in ("imagenet", "none"):
        _load_state(net, Path(weights), what)
    head = [name for name, module in net.named_modules() if isinstance(module, nn.Linear)][-1]
    parent, _, last = head.rpartition(".")
    setattr(net.get_submodule(parent), last, nn.Linear(net.get_submodule(head).in_features, len(active().classes)))
    _freeze(net, freeze)
    model = Normalized(net)
    model.head = head
    return model


def build_segmenter(arch: str, encoder: str, weights: str = "none", freeze: list[str] | tuple[str, ...] = (),
                    head_dropout: float | None = None) -> nn.Module:
    """An smp model (``arch``: ``Unet``, ``FPN``...; smp's ``encoder``) with one sigmoid channel
    per class; ``weights`` and ``freeze`` as :func:`build_classifier`'s (the encoder's
    :func:`smp_imagenet_state`, or its state dict). With ``head_dropout`` a classification head
    on the encoder too (smp's ``aux_params``), and the model returns ``(masks, labels)``."""
    if arch.lower() == TINY:
        if weights != "none":
            raise CloudpipeError(f"segmentation arch {arch!r} is a stand-in without pretrained weights; pass --weights none")
        net = TinySegmenter(len(active().classes), head_dropout=head_dropout)
        _freeze(net, freeze)
        return Normalized(net)
    import segmentation_models_pytorch as smp

    archs = {name.lower(): cls.__name__ for name, cls in smp.MODEL_ARCHITECTURES_MAPPING.items()}
    if arch.lower() not in archs:
        raise CloudpipeError(f"unknown segmentation arch {arch!r}; choose one of {', '.join(sorted(archs.values()))} "
                              f"(or {TINY}, a stand-in for tests)")
    if encoder.startswith(TIMM_ENCODER):
        import timm

        if not timm.is_model(encoder.removeprefix(TIMM_ENCODER)):
            raise _choose(f"timm encoder ({TIMM_ENCODER}<name>)", encoder.removeprefix(TIMM_ENCODER), timm.list_models(),
                          "efficientnet_b1, resnext50_32x4d, inception_resnet_v2")
    elif encoder not in smp.encoders.get_encoder_names():
        raise _choose("encoder", encoder, smp.encoders.get_encoder_names(),
                      f"resnet18, resnet34, resnet50, efficientnet-b0 (smp's) or {TIMM_ENCODER}<any timm model>")
    try:
        aux = None if head_dropout is None else {"classes": len(active().classes), "dropout": head_dropout}
        net = smp.create_model(arch, encoder_name=encoder, encoder_weights=None, classes=len(active().classes), aux_params=aux)
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
    state, wanted = timm_imagenet_state(name, WEIGHTS_OPTION["segmentation"]), encoder.model.state_dict()
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
