"""read_image / image_size on every kind of file an image folder holds (all generated here)."""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile

from uis_d2.data.image_io import BadImageError, image_size, read_image

RED = (255, 0, 0)


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _truncate(path: Path, keep_fraction: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep_fraction)])
    return path


# --- files that must be rejected -----------------------------------------------------------------


def test_missing_file_says_not_found(tmp_path):
    path = tmp_path / "absent.jpg"
    with pytest.raises(BadImageError, match="not found") as info:
        read_image(path)
    assert str(path) in str(info.value)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(BadImageError, match="0 bytes") as info:
        read_image(path)
    assert info.value.path == str(path)


def test_text_file_with_image_name(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a jpeg\n" * 20)
    with pytest.raises(BadImageError, match="not an image") as info:
        read_image(path)
    assert "notes.jpg" in str(info.value)


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_truncated_file(tmp_path, ext):
    path = tmp_path / f"cut.{ext}"
    Image.fromarray(_noise(64, 64)).save(path)
    _truncate(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(BadImageError) as info:
        read_image(path)
    assert f"cut.{ext}" in str(info.value)


def test_directory_is_rejected(tmp_path):
    with pytest.raises(BadImageError, match="not a regular file"):
        read_image(tmp_path)


def test_min_side_rejects_degenerate_images(tmp_path):
    path = tmp_path / "thin.png"
    Image.fromarray(_noise(1, 5)).save(path)
    assert read_image(path).shape == (1, 5, 3)
    with pytest.raises(BadImageError, match="min_side=2"):
        read_image(path, min_side=2)


@pytest.mark.parametrize("kwargs", [{"fmt": "RGBA"}, {"max_side": 0}])
def test_bad_arguments(tmp_path, kwargs):
    path = tmp_path / "ok.png"
    Image.fromarray(_noise(4, 4)).save(path)
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        read_image(path, **kwargs)


# --- colour modes --------------------------------------------------------------------------------


def test_rgb_and_bgr_channel_order(tmp_path):
    path = tmp_path / "rgb.png"
    pixels = _noise(6, 7)
    Image.fromarray(pixels).save(path)
    rgb = read_image(path)
    bgr = read_image(path, fmt="BGR")
    assert rgb.dtype == np.uint8 and rgb.shape == (6, 7, 3)
    np.testing.assert_array_equal(rgb, pixels)
    np.testing.assert_array_equal(bgr, pixels[:, :, ::-1])
    assert bgr.flags.c_contiguous


def test_one_by_one_image(tmp_path):
    path = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), RED).save(path)
    np.testing.assert_array_equal(read_image(path), [[RED]])


@pytest.mark.parametrize("mode", ["L", "1"])
def test_grayscale_and_bilevel_become_three_equal_channels(tmp_path, mode):
    gray = (np.arange(12, dtype=np.uint8).reshape(3, 4) % 2) * 255
    path = tmp_path / f"gray_{mode}.png"
    Image.fromarray(gray).convert(mode).save(path)
    out = read_image(path)
    assert out.shape == (3, 4, 3)
    for channel in range(3):
        np.testing.assert_array_equal(out[:, :, channel], gray)


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32768, 65535, 1000]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    assert cv2.imwrite(str(path), values)
    out = read_image(path)
    expected = np.rint(values * 255.0 / 65535.0).astype(np.uint8)  # [0, 1, 128, 255, 4]
    np.testing.assert_array_equal(out[:, :, 0], expected)
    np.testing.assert_array_equal(out[:, :, 2], expected)


def test_sixteen_bit_colour_png(tmp_path):
    values = np.array([[[65535, 32768, 0], [1000, 20000, 50000]]], dtype=np.uint16)
    path = tmp_path / "deep_rgb.png"
    assert cv2.imwrite(str(path), values[:, :, ::-1])  # OpenCV writes BGR
    out = read_image(path).astype(int)
    expected = np.rint(values * 255.0 / 65535.0)
    assert np.abs(out - expected).max() <= 1


def test_int32_image_is_treated_as_sixteen_bit(tmp_path):
    path = tmp_path / "int.tif"
    Image.fromarray(np.array([[0, 65535, 32768]], dtype=np.int32), mode="I").save(path)
    np.testing.assert_array_equal(read_image(path)[0, :, 1], [0, 255, 128])


def test_float_image_follows_pillow_convention(tmp_path):
    path = tmp_path / "float.tif"
    Image.fromarray(np.array([[-3.0, 0.4, 99.6, 300.0]], dtype=np.float32)).save(path)
    np.testing.assert_array_equal(read_image(path)[0, :, 0], [0, 0, 100, 255])


def test_rgba_is_composited_on_black(tmp_path):
    rgba = np.zeros((1, 3, 4), dtype=np.uint8)
    rgba[0, 0] = (200, 100, 50, 255)  # opaque: unchanged
    rgba[0, 1] = (200, 100, 50, 0)  # transparent: black
    rgba[0, 2] = (200, 100, 50, 128)  # half: scaled by 128/255
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    out = read_image(path)
    np.testing.assert_array_equal(out[0, 0], (200, 100, 50))
    np.testing.assert_array_equal(out[0, 1], (0, 0, 0))
    np.testing.assert_array_equal(out[0, 2], (100, 50, 25))


def test_gray_with_alpha(tmp_path):
    path = tmp_path / "la.png"
    Image.fromarray(np.array([[[90, 255], [90, 0]]], dtype=np.uint8), mode="LA").save(path)
    np.testing.assert_array_equal(read_image(path)[0], [[90, 90, 90], [0, 0, 0]])


def test_palette_with_transparency(tmp_path):
    palette_image = Image.new("P", (2, 1))
    palette_image.putpalette([255, 255, 255, *RED] + [0] * 762)
    palette_image.putpixel((0, 0), 0)
    palette_image.putpixel((1, 0), 1)
    path = tmp_path / "palette.png"
    palette_image.save(path, transparency=0)
    assert Image.open(path).mode == "P"
    np.testing.assert_array_equal(read_image(path)[0], [(0, 0, 0), RED])


def test_palette_without_transparency(tmp_path):
    path = tmp_path / "palette.gif"
    Image.new("RGB", (3, 2), RED).convert("P").save(path)
    np.testing.assert_array_equal(read_image(path), np.full((2, 3, 3), RED))


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=95)
    assert Image.open(path).mode == "CMYK"
    out = read_image(path).astype(int)
    assert out.shape == (16, 16, 3)
    assert np.abs(out - np.array(RED)).max() <= 8


# --- geometry ------------------------------------------------------------------------------------


def _exif_rotated_jpeg(path: Path, orientation: int) -> None:
    """A 40 (w) x 20 (h) JPEG, red in the stored top-left corner, with an EXIF orientation tag."""
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:8, :8] = RED
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(path, exif=exif, quality=95)


def test_exif_rotation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    _exif_rotated_jpeg(path, orientation=6)  # display = stored rotated 90 degrees clockwise
    out = read_image(path)
    assert out.shape == (40, 20, 3)
    assert out[2, -3, 0] > 200 and out[-3, 2, 0] < 50  # stored top-left is now top-right
    assert image_size(path) == (40, 20)


def test_image_size_without_rotation(tmp_path):
    path = tmp_path / "plain.jpg"
    _exif_rotated_jpeg(path, orientation=1)
    assert image_size(path) == (20, 40)
    assert read_image(path).shape == (20, 40, 3)


def test_image_size_rejects_non_images(tmp_path):
    path = tmp_path / "fake.png"
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(BadImageError, match="fake.png"):
        image_size(path)


@pytest.mark.parametrize("ext", ["jpg", "png"])
def test_max_side_downscales_long_side(tmp_path, ext):
    path = tmp_path / f"big.{ext}"
    Image.new("RGB", (800, 600), (30, 160, 90)).save(path, quality=95)
    out = read_image(path, max_side=100)
    assert out.shape == (75, 100, 3)
    assert np.abs(out.astype(int) - (30, 160, 90)).max() <= 3
    assert read_image(path, max_side=1000).shape == (600, 800, 3)  # never upscales


def test_images_above_pixel_limit_are_downscaled_without_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = tmp_path / "large.png"
    Image.fromarray(_noise(40, 40)).save(path)  # 1600 pixels: between the limit and twice it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = read_image(path)
    assert out.shape == (31, 31, 3)


def test_jpeg_above_hard_limit_is_decoded_at_reduced_scale(tmp_path, monkeypatch):
    path = tmp_path / "huge.jpg"
    Image.new("RGB", (200, 100), (10, 20, 240)).save(path, quality=95)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 20000 pixels: Pillow would refuse
    out = read_image(path)
    assert out.shape[0] * out.shape[1] <= 1000 and out.shape[1] == 2 * out.shape[0]
    assert Image.MAX_IMAGE_PIXELS == 1000  # the temporary override was restored


def test_non_jpeg_above_hard_limit_is_rejected(tmp_path, monkeypatch):
    path = tmp_path / "huge.png"
    Image.fromarray(_noise(100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(BadImageError, match="MAX_IMAGE_PIXELS"):
        read_image(path)
