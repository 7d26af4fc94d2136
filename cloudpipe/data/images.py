"""JPEG files: cheap header checks and fast reduced decoding.

``check_jpeg`` reads a few bytes of each file (start marker, frame header, end marker), so a
whole folder is checked before any work starts and a missing, corrupt, truncated or wrongly
sized image is reported up front. ``read_image`` decodes with libjpeg-turbo's DCT scaling
(simplejpeg, the same pixels as OpenCV's ``IMREAD_REDUCED_COLOR_2/4/8`` and ~10% faster), which
is several times faster than a full decode + resize, and in strict mode: data corrupt inside a
file that still ends with a valid marker is an error, not a libjpeg warning on stderr.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
import simplejpeg

from cloudpipe.core.arrays import check_numbers
from cloudpipe.core.constants import MAX_PIXELS
from cloudpipe.core.errors import BadType, BadValue, CloudpipeError
from cloudpipe.core.profile import active

_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_size(path: Path) -> tuple[int, int]:
    """(H, W) of a JPEG from its frame header, after checking its start and end markers (a
    missing file, not a JPEG, no frame header, or truncated: a CloudpipeError)."""
    try:
        with open(path, "rb") as f:
            if f.read(2) != b"\xff\xd8":
                raise CloudpipeError("not a JPEG file (no start-of-image marker)", path=path)
            size = None
            while size is None:
                marker = f.read(4)
                if len(marker) < 4 or marker[0] != 0xFF:
                    raise CloudpipeError("corrupt JPEG (no frame header found)", path=path)
                kind, length = marker[1], struct.unpack(">H", marker[2:])[0]
                if kind in _SOF_MARKERS:
                    header = f.read(5)
                    if len(header) < 5:
                        raise CloudpipeError("truncated JPEG (frame header cut off)", path=path)
                    size = struct.unpack(">HH", header[1:5])
                else:
                    f.seek(length - 2, 1)
            f.seek(0, 2)
            end = f.tell()
            f.seek(max(0, end - 64))
            if b"\xff\xd9" not in f.read():
                raise CloudpipeError("truncated JPEG (no end-of-image marker)", path=path)
    except FileNotFoundError:
        raise CloudpipeError("image not found", path=path) from None
    except IsADirectoryError:
        raise CloudpipeError("is a folder, not an image", path=path) from None
    except OSError as err:  # permission denied, I/O error, ...
        raise CloudpipeError(f"cannot read image ({err.strerror or err})", path=path) from None
    return check_declared_size(int(size[0]), int(size[1]), path)


def check_declared_size(height: int, width: int, path: Path) -> tuple[int, int]:
    """``(height, width)`` as a JPEG header declares them, if an image may be that size: not
    empty, at most :data:`~cloudpipe.core.competition.MAX_PIXELS` pixels."""
    if height < 1 or width < 1:
        raise CloudpipeError(f"corrupt JPEG (declares a {height}x{width} image)", path=path)
    if height * width > MAX_PIXELS:
        raise CloudpipeError(f"image declares {height}x{width} pixels, more than {MAX_PIXELS:,} "
                             f"(16 images of {active().image_size[0]}x{active().image_size[1]}); refused before decoding", path=path)
    return height, width


def _header_size(data, path: Path) -> tuple[int, int]:
    """(H, W) declared by a JPEG file's bytes, checked by :func:`check_declared_size`."""
    try:
        height, width = simplejpeg.decode_jpeg_header(data)[:2]
    except ValueError as err:
        raise CloudpipeError(f"cannot decode image: corrupt JPEG ({err})", path=path) from None
    return check_declared_size(height, width, path)


def check_images(paths: Iterable[Path], shape: tuple[int, int] | None = None) -> tuple[int, int]:
    """Check every image's header (a CloudpipeError names the first bad file); all must share
    one size (``shape`` if given), returned as (H, W)."""
    for path in paths:
        size = jpeg_size(path)
        if shape is None:
            shape = size
        elif size != shape:
            raise CloudpipeError(f"image is {size[0]}x{size[1]}; expected {shape[0]}x{shape[1]}", path=path)
    if shape is None:
        raise CloudpipeError("no images to check")
    return shape


def reduction_for(source: tuple[int, int], target: tuple[int, int]) -> int:
    """Largest libjpeg scale factor (1, 2, 4, 8) that still decodes at least ``target``."""
    return max((f for f in (2, 4, 8) if source[0] // f >= target[0] and source[1] // f >= target[1]), default=1)


def read_file(path: Path) -> bytes:
    """A file's bytes (or a CloudpipeError naming it)."""
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise CloudpipeError(f"cannot read image ({err.strerror or err})", path=path) from None


def read_image(path: Path, size: tuple[int, int], reduction: int = 1) -> np.ndarray:
    """Decode a JPEG as RGB uint8 (H, W, 3), (H, W) = ``size``, at the libjpeg scale factor
    ``reduction`` (:func:`reduction_for`).

    Raises:
        CloudpipeError: unreadable file, or JPEG data that libjpeg finds corrupt (even where it
            could recover, e.g. "premature end of data segment").
    """
    data = read_file(path)
    height, width = _header_size(data, path)
    try:
        image = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=height // reduction, min_width=width // reduction,
                                       min_factor=reduction, strict=True)
    except ValueError as err:
        raise CloudpipeError(f"cannot decode image: corrupt JPEG ({err})", path=path) from None
    return _bilinear(image, size)


def _bilinear(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` resized to ``size`` (H, W) bilinearly; itself when it has that size."""
    return image if image.shape[:2] == tuple(size) else cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def check_rgb(image: object, name: str = "image") -> np.ndarray:
    """``image`` as an RGB array a model reads: uint8 (H, W, 3) values 0-255, not empty, at most
    :data:`~cloudpipe.core.competition.MAX_PIXELS` pixels (checked before anything is read).

    Raises:
        BadValue: another shape, an empty or too large image, values outside 0-255 or NaN
            (checked before any conversion could wrap or zero them), naming ``name``.
        BadType: a dtype other than uint8 (a float image in [0, 1] would read as black), with
            how to convert it.
    """
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise BadValue(f"{name} must be RGB (H, W, 3); got shape {array.shape}")
    height, width = array.shape[:2]
    if height == 0 or width == 0:
        raise BadValue(f"{name} is empty ({height} x {width})")
    if height * width > MAX_PIXELS:
        raise BadValue(f"{name} is {height} x {width}, more than {MAX_PIXELS:,} pixels (16 images of "
                       f"{active().image_size[0]}x{active().image_size[1]})")
    if array.dtype != np.uint8:
        check_numbers(array, name, low=0, high=255, fix="RGB values are 0-255")
        if array.dtype.kind in "iu":
            how = "image.astype(np.uint8)"
        elif float(array.max()) <= 1:
            how = "(image * 255).round().astype(np.uint8) (values in [0, 1])"
        else:
            how = "image.round().astype(np.uint8)"
        raise BadType(f"{name} must be uint8 RGB values 0-255, got dtype {array.dtype}; convert it with {how}")
    return array


def resize_decoded(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A fully decoded RGB image (H, W, 3) brought to ``size`` as :func:`read_image` brings its
    JPEG: reduced by the same factor (:func:`reduction_for`) as the mean of each factor x factor
    block, edges replicated to whole blocks (what libjpeg's DCT scaling computes, within a grey
    level or so), then resized bilinearly."""
    factor = reduction_for(image.shape[:2], size)
    if factor > 1:
        height, width = (-(-side // factor) * factor for side in image.shape[:2])
        whole = cv2.copyMakeBorder(image, 0, height - image.shape[0], 0, width - image.shape[1], cv2.BORDER_REPLICATE)
        image = cv2.resize(whole, (width // factor, height // factor), interpolation=cv2.INTER_AREA)
    return _bilinear(image, size)


def decode_batch(datas: list, paths: list[Path], size: tuple[int, int], reduction: int, device):
    """Decode a batch of JPEG files' bytes on ``device`` (nvJPEG on a CUDA GPU, libjpeg on the
    CPU) into a uint8 (N, 3, H, W) channels_last batch of ``size``, the pixels
    :func:`read_image` gives within a grey level or so: the full decode, a ``reduction`` x
    ``reduction`` mean (what libjpeg's DCT scaling approximates), then a bilinear resize.
    ``datas``: per image (all one size), its file's bytes as a 1-D uint8 CPU tensor.

    Raises:
        CloudpipeError: naming the first file the decoder rejects, or whose header declares
            an image too large to decode (checked first, see
            :data:`~cloudpipe.core.competition.MAX_PIXELS`).
    """
    import warnings

    import torch
    import torchvision.io

    for data, path in zip(datas, paths):
        _header_size(data.numpy(), path)
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its image decoders for TorchCodec's
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            decoded = torchvision.io.decode_jpeg(datas, mode=torchvision.io.ImageReadMode.RGB, device=device)
        except RuntimeError as batch_err:  # find the file at fault
            for data, path in zip(datas, paths):
                try:
                    torchvision.io.decode_jpeg(data, mode=torchvision.io.ImageReadMode.RGB)
                except RuntimeError as err:
                    raise CloudpipeError(f"cannot decode image: corrupt JPEG ({str(err).splitlines()[0]})", path=path) from None
            raise CloudpipeError(f"cannot decode these images on {device} ({str(batch_err).splitlines()[0]}); "
                                 "--decode workers decodes them on the CPU", path=paths[0]) from None
    images = torch.stack(decoded).float()
    if reduction > 1:
        images = torch.nn.functional.avg_pool2d(images, reduction)
    if tuple(images.shape[2:]) != tuple(size):
        images = torch.nn.functional.interpolate(images, size=tuple(size), mode="bilinear", align_corners=False)
    return images.round_().clamp_(0, 255).to(torch.uint8).contiguous(memory_format=torch.channels_last)
