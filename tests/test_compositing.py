"""Product-shot compositing: exact on white and on transparency, inward feathering, square framing,
and the image conversions in front of it (grayscale, RGBA, empty and unreadable files)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fashiongen.runtime.compositing import (CompositeOptions, composite, cutout_rgba, flatten_on_white, frame_square,
                                 mask_bbox, mask_image)
from fashiongen.runtime.images import as_rgb, load_rgb_image


def garment(height=90, width=120, seed=0):
    """A random image and a blob-shaped mask (an ellipse with a notch) that does not touch the border."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:height, :width]
    mask = ((yy - height * 0.5) / (height * 0.3)) ** 2 + ((xx - width * 0.45) / (width * 0.2)) ** 2 <= 1
    mask &= ~((yy > height * 0.5) & (np.abs(xx - width * 0.45) < 3))
    return image, mask


def test_on_white_is_exact():
    image, mask = garment()
    shot = composite(image, mask)
    assert shot.shape == image.shape and shot.dtype == np.uint8
    assert (shot[~mask] == 255).all()
    assert np.array_equal(shot[mask], image[mask])


def test_transparent_is_exact():
    image, mask = garment(seed=1)
    shot = composite(image, mask, CompositeOptions(transparent=True))
    assert shot.shape == (*image.shape[:2], 4)
    assert (shot[..., 3][~mask] == 0).all() and (shot[..., 3][mask] == 255).all()
    assert np.array_equal(shot[..., :3][mask], image[mask])


def test_flatten_rounds_and_keeps_the_extremes():
    rgba = np.array([[[10, 20, 30, 255], [10, 20, 30, 0], [0, 0, 0, 128]]], dtype=np.uint8)
    assert flatten_on_white(rgba).tolist() == [[[10, 20, 30], [255, 255, 255], [127, 127, 127]]]


def test_feathering_softens_only_inside_the_mask():
    image, mask = garment(seed=2)
    hard = composite(image, mask, CompositeOptions(transparent=True))
    soft = composite(image, mask, CompositeOptions(transparent=True, feather=4))
    alpha = soft[..., 3]
    assert (alpha[~mask] == 0).all()                       # the outside stays untouched
    assert (alpha[mask] < 255).any() and (alpha <= hard[..., 3]).all()
    from PIL import ImageFilter
    interior = np.asarray(Image.fromarray(mask_image(mask)).filter(ImageFilter.MinFilter(17))) > 0  # 8 px in
    assert interior.any()
    assert (alpha[interior] == 255).all()
    white = composite(image, mask, CompositeOptions(feather=4))
    assert (white[~mask] == 255).all() and np.array_equal(white[interior], image[interior])


@pytest.mark.parametrize("box", [(10, 20, 40, 100), (0, 0, 90, 15), (30, 50, 31, 51)])
@pytest.mark.parametrize("transparent", [False, True])
def test_framing_keeps_the_whole_garment_and_its_aspect_ratio(box, transparent):
    top, left, bottom, right = box
    image = np.random.default_rng(3).integers(0, 200, (90, 120, 3), dtype=np.uint8)
    mask = np.zeros((90, 120), bool)
    mask[top:bottom, left:right] = True
    size, margin = 128, 0.1
    shot = composite(image, mask, CompositeOptions(transparent=transparent, frame=size, margin=margin))
    assert shot.shape == (size, size, 4 if transparent else 3)
    visible = shot[..., 3] > 0 if transparent else (shot != 255).any(axis=-1)
    t, l, b, r = mask_bbox(visible)
    pad = round(margin * size)
    assert t >= pad - 1 and l >= pad - 1 and b <= size - pad + 1 and r <= size - pad + 1  # inside the margin
    assert max(b - t, r - l) >= size - 2 * pad - 1                  # scaled to fill it
    h, w = bottom - top, right - left
    assert abs((b - t) / (r - l) - h / w) <= 2.5 / min(b - t, r - l) * max(1, h / w)
    assert abs((t + b) / 2 - size / 2) <= 1 and abs((l + r) / 2 - size / 2) <= 1   # centred


def test_framing_an_opaque_block_keeps_its_colour():
    image = np.zeros((40, 60, 3), np.uint8)
    image[:] = (200, 30, 90)
    mask = np.zeros((40, 60), bool)
    mask[5:25, 10:50] = True
    shot = composite(image, mask, CompositeOptions(frame=100, margin=0.05))
    assert (shot[50, 50] == (200, 30, 90)).all() and (shot[0, 0] == 255).all() and (shot[99, 99] == 255).all()


def test_framing_nothing_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        frame_square(np.zeros((8, 8, 4), np.uint8), 32)


@pytest.mark.parametrize("options, word", [(CompositeOptions(feather=-1), "feather: "),
                                           (CompositeOptions(frame=0), "frame: "),
                                           (CompositeOptions(frame=64, margin=0.6), "margin: ")])
def test_bad_options(options, word):
    image, mask = garment()
    with pytest.raises(ValueError, match=word):
        composite(image, mask, options)


def test_mask_shape_must_match():
    image, mask = garment()
    with pytest.raises(ValueError, match="does not match"):
        cutout_rgba(image, mask[:-1])


def test_mask_image():
    mask = np.array([[True, False]])
    assert mask_image(mask).tolist() == [[255, 0]] and mask_image(mask).dtype == np.uint8


# -- inputs --------------------------------------------------------------------------------------------
def test_grayscale_and_rgba_inputs_are_converted(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    rgb = load_rgb_image(tmp_path / "g.png")
    assert rgb.shape == (8, 8, 3) and (rgb == gray[..., None]).all()
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:2, ..., 3] = 255   # top half opaque red, bottom half transparent -> white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    got = load_rgb_image(tmp_path / "a.png")
    assert (got[:2] == (255, 0, 0)).all() and (got[2:] == 255).all()
    Image.fromarray((gray.astype(np.uint16) * 257)).save(tmp_path / "g16.png")
    assert (load_rgb_image(tmp_path / "g16.png")[..., 0] == gray).all()
    assert as_rgb(gray).shape == (8, 8, 3) and as_rgb(rgba).shape == (4, 4, 3)


def test_bad_image_files(tmp_path):
    (tmp_path / "text.png").write_text("not a picture")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "cut.png").write_bytes((lambda p: (Image.new("RGB", (50, 50)).save(p), p.read_bytes()[:60])[1])(
        tmp_path / "whole.png"))
    for name, word in [("text.png", "not an image"), ("empty.png", "empty"), ("missing.png", "does not exist"),
                       ("cut.png", "cannot be read")]:
        with pytest.raises(ValueError, match=word) as info:
            load_rgb_image(tmp_path / name)
        assert name in str(info.value)
    with pytest.raises(ValueError, match="folder"):
        load_rgb_image(tmp_path)


def test_zero_sized_image_array():
    with pytest.raises(ValueError, match="no pixels"):
        as_rgb(np.zeros((0, 10, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        as_rgb(np.zeros((4, 4, 3), np.float32))
