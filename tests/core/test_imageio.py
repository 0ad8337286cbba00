"""difaug.core.imageio: every image mode to RGB uint8, masks keep their values, cheap completeness checks."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from _trees import class_mask, photo, save_image, save_mask, truncate
from PIL import Image

from difaug.core import imageio


@pytest.mark.parametrize(
    ("name", "mode"),
    [("rgb.jpg", "RGB"), ("grey.jpg", "L"), ("rgba.png", "RGBA"), ("pal.png", "P"), ("cmyk.jpg", "CMYK")],
)
def test_load_image_gives_rgb_uint8(tmp_path: Path, name: str, mode: str) -> None:
    path = save_image(tmp_path / name, mode=mode, size=(40, 30))
    arr = imageio.load_image(path)
    assert arr.shape == (30, 40, 3)
    assert arr.dtype == np.uint8
    assert arr.flags.c_contiguous


def test_load_image_16bit_scales_to_8bit(tmp_path: Path) -> None:
    arr16 = np.full((8, 10), 65535, dtype=np.uint16)
    arr16[:, :5] = 0
    Image.fromarray(arr16).save(tmp_path / "d.png")
    arr = imageio.load_image(tmp_path / "d.png")
    assert arr.shape == (8, 10, 3)
    assert arr[0, 0].tolist() == [0, 0, 0]
    assert arr[0, 9].tolist() == [255, 255, 255]


def test_load_image_from_bytes_matches_path(tmp_path: Path) -> None:
    path = save_image(tmp_path / "a.jpg")
    assert np.array_equal(imageio.load_image(path.read_bytes()), imageio.load_image(path))


@pytest.mark.parametrize("kind", ["palette", "L", "16bit"])
def test_load_mask_keeps_class_ids(tmp_path: Path, kind: str) -> None:
    mask = class_mask({3: (1, 1, 10, 10), 15: (20, 20, 5, 5)}, size=(40, 30))
    arr = imageio.load_mask(save_mask(tmp_path / f"{kind}.png", mask, kind))
    assert arr.shape == (30, 40)
    assert imageio.value_counts(arr) == {
        0: int((mask == 0).sum()),
        3: 100,
        15: 25,
        255: int((mask == 255).sum()),
    }


def test_load_mask_16bit_values_above_255(tmp_path: Path) -> None:
    mask = np.zeros((6, 6), dtype=np.uint16)
    mask[2:4, 2:4] = 734
    arr = imageio.load_mask(save_mask(tmp_path / "m.png", mask, "16bit"))
    assert imageio.value_counts(arr) == {0: 32, 734: 4}


def test_load_mask_accepts_grey_rgb_and_refuses_colour(tmp_path: Path) -> None:
    grey = np.zeros((5, 5), dtype=np.uint8)
    grey[1:3, 1:3] = 255
    Image.fromarray(grey).convert("RGB").save(tmp_path / "grey_rgb.png")
    assert imageio.value_counts(imageio.load_mask(tmp_path / "grey_rgb.png")) == {0: 21, 255: 4}
    colour = np.zeros((5, 5, 3), dtype=np.uint8)
    colour[1, 1] = (128, 0, 0)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(imageio.ImageReadError, match="colour mask"):
        imageio.load_mask(tmp_path / "colour.png")


@pytest.mark.parametrize("deep", [False, True])
def test_check_image_file_complete_files(tmp_path: Path, deep: bool) -> None:
    assert imageio.check_image_file(save_image(tmp_path / "a.jpg", size=(40, 30)), deep=deep) == (
        40,
        30,
        "RGB",
    )
    assert imageio.check_image_file(save_image(tmp_path / "b.png", mode="RGBA"), deep=deep)[2] == "RGBA"
    assert imageio.check_image_file(save_image(tmp_path / "c.jpg", mode="L"), deep=deep)[2] == "L"


@pytest.mark.parametrize("deep", [False, True])
@pytest.mark.parametrize("name", ["t.jpg", "t.png"])
def test_check_image_file_finds_truncation(tmp_path: Path, deep: bool, name: str) -> None:
    path = truncate(save_image(tmp_path / name), keep=0.6)
    assert imageio.probe(path)[:2] == (128, 96)  # the header alone does not notice
    with pytest.raises(imageio.ImageReadError, match="cannot decode"):
        imageio.check_image_file(path, deep=deep)


def test_check_image_file_trailing_bytes_after_eoi_are_fine(tmp_path: Path) -> None:
    # Some cameras append data after the JPEG end marker: the marker test fails, the decode decides.
    path = save_image(tmp_path / "junk.jpg")
    path.write_bytes(path.read_bytes() + b"EXTRA-TRAILER" * 10)
    assert imageio.check_image_file(path)[:2] == (128, 96)


def test_check_image_file_missing_and_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(imageio.ImageReadError, match="file not found"):
        imageio.check_image_file(tmp_path / "nope.jpg")
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(imageio.ImageReadError, match="cannot decode"):
        imageio.check_image_file(tmp_path / "text.jpg")


def test_value_counts_dtypes() -> None:
    a8 = np.array([[0, 0, 7], [255, 7, 7]], dtype=np.uint8)
    assert imageio.value_counts(a8) == {0: 2, 7: 3, 255: 1}
    assert list(imageio.value_counts(a8)) == [0, 7, 255]
    assert imageio.value_counts(a8.astype(np.int32) * 100) == {0: 2, 700: 3, 25500: 1}


def test_resize_nearest_keeps_mask_values() -> None:
    mask = class_mask({5: (2, 2, 8, 8)}, size=(20, 16)).astype(np.uint8)
    out = imageio.resize(mask, (37, 29), nearest=True)
    assert out.shape == (29, 37)
    assert set(np.unique(out).tolist()) <= {0, 5, 255}


def test_encode_png_roundtrip_and_jpeg() -> None:
    img = photo(24, 16)
    assert np.array_equal(imageio.load_image(imageio.encode(img, "png")), img)
    jpeg = imageio.encode(img, "jpeg", quality=90)
    assert jpeg[:2] == b"\xff\xd8"
    assert imageio.load_image(jpeg).shape == img.shape
    with pytest.raises(ValueError, match="unknown image format"):
        imageio.encode(img, "gif")


def _jpeg(tmp_path: Path, cut: bool) -> bytes:
    path = save_image(tmp_path / "p.jpg", size=(256, 192))
    raw = path.read_bytes()
    return raw[: len(raw) // 2] + b"\xff\xd9" if cut else raw


def test_jpeg_decoder_warnings_find_a_cut_file_with_an_end_marker(tmp_path: Path) -> None:
    assert imageio.jpeg_decoder_warnings(_jpeg(tmp_path, cut=False)) == []
    warnings = imageio.jpeg_decoder_warnings(_jpeg(tmp_path, cut=True))
    assert warnings and "Corrupt JPEG data" in warnings[0]
    # fd 2 is back where it was: a write to it still works
    os.write(2, b"")


def test_deep_check_refuses_a_cut_jpeg_that_a_header_check_accepts(tmp_path: Path) -> None:
    path = tmp_path / "cut.jpg"
    path.write_bytes(_jpeg(tmp_path, cut=True))
    assert imageio.check_image_file(path)[:2] == (256, 192)  # complete-looking: end marker present
    assert imageio.load_image(path).shape == (192, 256, 3)  # and PIL decodes it without a word
    with pytest.raises(imageio.ImageReadError, match=r"cannot decode .*cut\.jpg: Corrupt JPEG data"):
        imageio.check_image_file(path, deep=True)


def test_padding_between_jpeg_segments_is_not_a_failure(tmp_path: Path) -> None:
    # libjpeg warns "3 extraneous bytes before marker 0xdb", but every pixel is there
    raw = _jpeg(tmp_path, cut=False)
    i = raw.index(b"\xff\xdb")
    padded = tmp_path / "padded.jpg"
    padded.write_bytes(raw[:i] + b"\x00\x00\x00" + raw[i:])
    assert imageio.jpeg_decoder_warnings(padded.read_bytes()) == []
    assert imageio.check_image_file(padded, deep=True)[:2] == (256, 192)


def test_the_fast_png_is_lossless_and_its_own_encoding() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)
    fast = imageio.encode_png(img, fast=True)
    assert np.array_equal(imageio.load_image(fast), img)
    assert fast != imageio.encode_png(img)  # another encoder's bytes: zlib level 1, not PIL's 6
    grey = rng.integers(0, 255, (12, 10), dtype=np.uint8)
    assert np.array_equal(imageio.load_mask(imageio.encode_png(grey, fast=True)), grey)


def test_url_support_is_checked_without_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert imageio.url_support_problem("memory://x/a.jpg") == ""  # fsspec's own backend
    assert imageio.url_support_problem(str(tmp_path / "a.jpg")) == ""  # local paths need nothing
    assert "unknown URL protocol nosuch://" in imageio.url_support_problem("nosuch://x/a.jpg")
    # Present (stand-ins: only their presence is checked, nothing is imported or fetched): left to fsspec.
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: object() if name in ("aiohttp", "requests") else real(name, *a),
    )
    assert imageio.url_support_problem("https://example.org/a.jpg") == ""
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "aiohttp", None)  # as if not installed
    assert imageio.url_support_problem("http://example.org/a.jpg").startswith("http:// URLs need aiohttp")
    # A reader that still meets the missing backend says the same, as an ImageReadError (one line).
    monkeypatch.setattr("fsspec.open", lambda *a, **k: (_ for _ in ()).throw(ImportError("no aiohttp")))
    with pytest.raises(
        imageio.ImageReadError, match=r"cannot read http://example.org/a.jpg: http:// URLs need aiohttp"
    ):
        imageio.read_bytes("http://example.org/a.jpg")
