import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

import cloudpipe.data.images
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.data.images import check_images, jpeg_size, read_image, reduction_for

REAL_IMAGES = sorted((Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "train_images").glob("*.jpg"))
needs_real = pytest.mark.skipif(not REAL_IMAGES, reason="real images not available")


def write_jpeg(path: Path, image_bgr: np.ndarray, quality: int = 95, progressive: bool = False) -> Path:
    params = [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)]
    assert cv2.imwrite(str(path), image_bgr, params)
    return path


def red_jpeg(path: Path, shape=(64, 96)) -> Path:
    image = np.zeros((*shape, 3), np.uint8)
    image[..., 2] = 255  # OpenCV is BGR: channel 2 is red
    return write_jpeg(path, image, quality=100)


def error_of(func, *args) -> str:
    with pytest.raises(CloudpipeError) as info:
        func(*args)
    message = str(info.value)
    assert "\n" not in message
    return message


@needs_real
def test_jpeg_size_real():
    for path in REAL_IMAGES:
        assert jpeg_size(path) == (1400, 2100)
    assert check_images(REAL_IMAGES) == (1400, 2100)


@needs_real
def test_read_image_real_reduced():
    path = REAL_IMAGES[0]
    factor = reduction_for((1400, 2100), (350, 525))
    assert factor == 4
    image = read_image(path, (350, 525), factor)
    assert image.shape == (350, 525, 3) and image.dtype == np.uint8
    full = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    reference = cv2.resize(full, (525, 350), interpolation=cv2.INTER_AREA)
    assert np.abs(image.astype(int) - reference).mean() < 4


def test_jpeg_size_synthetic(tiny_data):
    paths = sorted(tiny_data.rglob("*.jpg"))
    assert len(paths) == 30
    assert all(jpeg_size(p) == (64, 96) for p in paths)
    assert check_images(paths) == (64, 96)
    assert check_images(iter(paths), (64, 96)) == (64, 96)


@pytest.mark.parametrize("shape", [(1, 1), (17, 5), (480, 33)])
@pytest.mark.parametrize("progressive", [False, True])
def test_jpeg_size_odd_shapes(tmp_path, shape, progressive):
    path = write_jpeg(tmp_path / "x.jpg", np.full((*shape, 3), 128, np.uint8), progressive=progressive)
    assert jpeg_size(path) == shape


def test_jpeg_size_missing(tmp_path):
    message = error_of(jpeg_size, tmp_path / "nope.jpg")
    assert "not found" in message and "nope.jpg" in message


def test_jpeg_size_folder(tmp_path):
    assert "folder" in error_of(jpeg_size, tmp_path)


@pytest.mark.parametrize("content", [b"", b"hello", b"\x89PNG\r\n\x1a\n" + bytes(100)])
def test_jpeg_size_not_a_jpeg(tmp_path, content):
    path = tmp_path / "fake.jpg"
    path.write_bytes(content)
    message = error_of(jpeg_size, path)
    assert "not a JPEG" in message and str(path) in message


def test_jpeg_size_png(tmp_path):
    path = tmp_path / "image.jpg"
    assert cv2.imwrite(str(tmp_path / "image.png"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "image.png").rename(path)
    assert "not a JPEG" in error_of(jpeg_size, path)


def test_jpeg_size_truncated(tmp_path, tiny_data):
    source = next((tiny_data / "train_images").glob("*.jpg"))
    data = source.read_bytes()
    half = tmp_path / "half.jpg"
    half.write_bytes(data[: len(data) // 2])
    message = error_of(jpeg_size, half)
    assert "truncated" in message and str(half) in message
    assert cv2.imread(str(source)) is not None  # the original is fine


@pytest.mark.parametrize("keep", [2, 3, 10, 40])
def test_jpeg_size_cut_inside_header(tmp_path, tiny_data, keep):
    source = next((tiny_data / "train_images").glob("*.jpg"))
    path = tmp_path / "cut.jpg"
    path.write_bytes(source.read_bytes()[:keep])
    assert str(path) in error_of(jpeg_size, path)


def test_jpeg_size_unreadable(tmp_path, monkeypatch):
    path = red_jpeg(tmp_path / "locked.jpg")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cloudpipe.data.images, "open", denied, raising=False)  # works as root too
    message = error_of(jpeg_size, path)
    assert "cannot read" in message and "Permission denied" in message and str(path) in message


def test_check_images_wrong_size(tmp_path, tiny_data):
    folder = tmp_path / "images"
    shutil.copytree(tiny_data / "train_images", folder)
    odd = write_jpeg(folder / "zzzzzzz.jpg", np.zeros((32, 48, 3), np.uint8))
    paths = sorted(folder.glob("*.jpg"))
    assert paths[-1] == odd
    message = error_of(check_images, paths)
    assert str(odd) in message and "32x48" in message and "expected 64x96" in message
    # With an expected shape, the first file already fails.
    message = error_of(check_images, paths, (32, 48))
    assert str(paths[0]) in message and "64x96" in message
    assert check_images([odd], (32, 48)) == (32, 48)


def test_check_images_stops_at_bad_file(tmp_path, tiny_data):
    folder = tmp_path / "images"
    shutil.copytree(tiny_data / "train_images", folder)
    paths = sorted(folder.glob("*.jpg"))
    paths[3].write_bytes(paths[3].read_bytes()[:200])
    assert str(paths[3]) in error_of(check_images, paths)
    assert str(folder / "missing.jpg") in error_of(check_images, [*paths[:2], folder / "missing.jpg"])


def test_check_images_empty():
    assert "no images" in error_of(check_images, [])


@pytest.mark.parametrize("reduction", [1, 2, 4])
def test_read_image_rgb_at_reduction(tmp_path, reduction):
    path = red_jpeg(tmp_path / "red.jpg")
    size = (64 // reduction, 96 // reduction)
    image = read_image(path, size, reduction)
    assert image.shape == (*size, 3) and image.dtype == np.uint8
    assert image[..., 0].min() > 235  # red first: RGB, not OpenCV's BGR
    assert image[..., 1].max() < 20 and image[..., 2].max() < 20


@pytest.mark.parametrize("reduction,flag", [(2, cv2.IMREAD_REDUCED_COLOR_2), (4, cv2.IMREAD_REDUCED_COLOR_4)])
def test_read_image_uses_reduced_decode(tiny_data, reduction, flag):
    path = next((tiny_data / "train_images").glob("*.jpg"))
    expected = cv2.cvtColor(cv2.imread(str(path), flag), cv2.COLOR_BGR2RGB)
    assert expected.shape[:2] == (64 // reduction, 96 // reduction)
    np.testing.assert_array_equal(read_image(path, expected.shape[:2], reduction), expected)


@pytest.mark.parametrize("reduction", [1, 2, 4])
def test_read_image_resizes_to_requested_size(tmp_path, reduction):
    path = red_jpeg(tmp_path / "red.jpg")
    image = read_image(path, (13, 21), reduction)
    assert image.shape == (13, 21, 3)
    assert image[..., 0].min() > 235 and image[..., 2].max() < 20


def test_read_image_full_size_matches_opencv(tiny_data):
    path = next((tiny_data / "train_images").glob("*.jpg"))
    expected = cv2.imread(str(path))[..., ::-1]
    np.testing.assert_array_equal(read_image(path, (64, 96)), expected)


def test_read_image_corrupt(tmp_path):
    path = tmp_path / "bad.jpg"
    path.write_bytes(b"not an image at all")
    message = error_of(read_image, path, (8, 8))
    assert "cannot decode" in message and str(path) in message


@pytest.mark.parametrize(
    "source,target,expected",
    [
        ((1400, 2100), (350, 525), 4),
        ((1400, 2100), (512, 768), 2),
        ((1400, 2100), (700, 1050), 2),
        ((1400, 2100), (701, 1050), 1),
        ((1400, 2100), (1400, 2100), 1),
        ((1400, 2100), (175, 262), 8),
        ((1400, 2100), (176, 262), 4),
        ((1400, 2100), (100, 600), 2),  # the wider side decides
        ((64, 96), (64, 96), 1),
        ((64, 96), (16, 24), 4),
        ((64, 96), (2, 2), 8),
        ((100, 100), (60, 10), 1),
    ],
)
def test_reduction_for(source, target, expected):
    factor = reduction_for(source, target)
    assert factor == expected
    assert source[0] // factor >= target[0] and source[1] // factor >= target[1]


@pytest.mark.parametrize("damage", ["chunk_removed", "garbage_inserted"])
def test_corrupt_inside_but_well_framed_is_an_error(tmp_path, tiny_data, damage):
    """Start marker, frame header and end marker intact: the header check passes, the decode
    refuses (libjpeg would only print a warning and return a damaged image)."""
    data = next((tiny_data / "train_images").glob("*.jpg")).read_bytes()
    mid = len(data) // 2
    broken = data[:mid] + data[mid + 200:] if damage == "chunk_removed" else data[:mid] + b"\xff\xd0junk" + data[mid:]
    path = tmp_path / "broken.jpg"
    path.write_bytes(broken)
    assert jpeg_size(path) == (64, 96)
    message = error_of(read_image, path, (64, 96))
    assert "corrupt JPEG" in message and str(path) in message and "\n" not in message


def _file_tensors(paths):
    import torch

    from cloudpipe.data.images import read_file

    return [torch.frombuffer(bytearray(read_file(p)), dtype=torch.uint8) for p in paths]


@pytest.mark.parametrize("size,reduction", [((64, 96), 1), ((32, 48), 2), ((48, 64), 1), ((16, 24), 4)])
def test_decode_batch_gives_the_pixels_of_read_image(tiny_data, size, reduction):
    """The device decode (here on the CPU) and the reduced libjpeg decode agree within a few
    grey levels: a model sees the same images either way."""
    import torch

    from cloudpipe.data.images import decode_batch

    paths = sorted((tiny_data / "test_images").glob("*.jpg"))
    batch = decode_batch(_file_tensors(paths), paths, size, reduction, torch.device("cpu"))
    assert batch.shape == (len(paths), 3, *size) and batch.dtype == torch.uint8
    assert batch.is_contiguous(memory_format=torch.channels_last)
    expected = np.stack([read_image(p, size, reduction) for p in paths]).astype(int)
    diff = np.abs(batch.permute(0, 2, 3, 1).numpy().astype(int) - expected)
    assert diff.mean() < 0.5 and diff.max() <= 8
    if reduction == 1 and size == (64, 96):
        assert diff.max() == 0  # no resize: the very same decode


@needs_real
def test_decode_batch_real_images():
    import torch

    from cloudpipe.data.images import decode_batch

    batch = decode_batch(_file_tensors(REAL_IMAGES[:2]), REAL_IMAGES[:2], (512, 768), 2, torch.device("cpu"))
    expected = np.stack([read_image(p, (512, 768), 2) for p in REAL_IMAGES[:2]]).astype(int)
    assert np.abs(batch.permute(0, 2, 3, 1).numpy().astype(int) - expected).mean() < 0.5


def test_decode_batch_names_the_bad_file(tmp_path, tiny_data):
    import torch

    from cloudpipe.data.images import decode_batch

    good = next((tiny_data / "test_images").glob("*.jpg"))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not really a JPEG \xff\xd9")
    message = error_of(decode_batch, _file_tensors([good, bad]), [good, bad], (64, 96), 1, torch.device("cpu"))
    assert "cannot decode" in message and str(bad) in message and str(good) not in message


def test_decode_batch_says_what_to_do_when_only_the_device_fails(monkeypatch, tiny_data):
    """Files libjpeg decodes but the device's decoder refuses: one line pointing to --decode workers."""
    import torch
    import torchvision.io

    from cloudpipe.data.images import decode_batch

    real = torchvision.io.decode_jpeg

    def picky(input, mode=None, device="cpu"):
        if isinstance(input, list):
            raise RuntimeError("nvjpegDecodeBatched failed: 2\nmore detail")
        return real(input, mode=mode)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", picky)
    paths = sorted((tiny_data / "test_images").glob("*.jpg"))[:2]
    message = error_of(decode_batch, _file_tensors(paths), paths, (64, 96), 1, torch.device("cpu"))
    assert "cannot decode these images on cpu (nvjpegDecodeBatched failed: 2)" in message and "--decode workers" in message


def jpeg_bomb(path: Path, declared=(12000, 12000)) -> Path:
    """A JPEG of a few hundred bytes whose frame header declares ``declared`` (H, W)."""
    import struct

    data = bytearray(cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))[1].tobytes())
    i = 2
    while data[i + 1] not in (0xC0, 0xC2):
        i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
    data[i + 5:i + 9] = struct.pack(">HH", *declared)
    path.write_bytes(bytes(data))
    return path


def test_a_jpeg_declaring_a_huge_size_is_refused_before_any_decode(tmp_path):
    import torch

    from cloudpipe.data.images import decode_batch

    bomb = jpeg_bomb(tmp_path / "bomb.jpg")
    assert bomb.stat().st_size < 3000
    for message in (error_of(jpeg_size, bomb), error_of(read_image, bomb, (64, 96), 1),
                    error_of(decode_batch, _file_tensors([bomb]), [bomb], (64, 96), 1, torch.device("cpu"))):
        assert "declares 12000x12000 pixels" in message and "refused before decoding" in message and str(bomb) in message
    assert "declares a 0x96 image" in error_of(jpeg_size, jpeg_bomb(tmp_path / "empty.jpg", (0, 96)))
    assert jpeg_size(jpeg_bomb(tmp_path / "big.jpg", (2800, 4200))) == (2800, 4200)  # 4 competition images: fine


def test_predict_seg_refuses_a_jpeg_bomb_on_both_decode_paths(tmp_path, tiny_data, seg_run):
    from conftest import CPU_QUIET, cli

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    for path in (data / "train_images").glob("*.jpg"):
        jpeg_bomb(path)
    for decode in ("workers", "device"):
        out = tmp_path / decode / "val.csv"
        result = cli("predict-seg", "--run", seg_run, "--data", data, "--split", "val", "--out", out, "--decode", decode,
                     *CPU_QUIET)
        assert result.exit_code == 2 and "declares 12000x12000 pixels" in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1 and not out.parent.exists()


def test_a_decoded_array_is_brought_to_size_by_the_decoders_steps(tmp_path):
    """resize_decoded: the decoder's reduction as a mean of whole blocks (edges replicated), then
    bilinear; exactly read_image's pixels where no reduction applies, within a grey level where it does."""
    import simplejpeg

    from cloudpipe.data.images import resize_decoded
    from cloudpipe.data.synth import make_image

    image, _ = make_image(np.random.default_rng(1), (350, 525))  # 525 is no multiple of 2 or 4
    path = tmp_path / "a.jpg"
    path.write_bytes(simplejpeg.encode_jpeg(image, quality=90, colorspace="RGB"))
    full = read_image(path, (350, 525))
    for size in ((350, 525), (200, 300), (160, 240), (80, 120)):  # reductions 1, 1, 2, 4
        decoded = read_image(path, size, reduction_for((350, 525), size))
        mine = resize_decoded(full, size)
        assert mine.shape == (*size, 3)
        if reduction_for((350, 525), size) == 1:
            assert np.array_equal(mine, decoded)
        else:
            assert np.abs(mine.astype(int) - decoded).mean() < 0.5
