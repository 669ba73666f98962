"""Sample images and timm's eval transform for mobilenetv4_conv_small (ecrl.load.images)."""

from __future__ import annotations

import numpy as np
import pytest

from ecrl import serving
from ecrl.load import images

MEAN = np.asarray(serving.IMAGENET_MEAN, dtype=np.float32)
STD = np.asarray(serving.IMAGENET_STD, dtype=np.float32)


def _normalized(rgb_uint8: tuple[int, int, int]) -> np.ndarray:
    return (np.asarray(rgb_uint8, dtype=np.float32) / 255.0 - MEAN) / STD


def test_preprocess_returns_chw_float32_of_the_model_input_shape():
    out = images.preprocess(np.zeros((300, 451, 3), np.uint8))
    assert out.shape == serving.INPUT_SHAPE == (3, 224, 224)
    assert out.dtype == np.float32 and out.flags.c_contiguous


def test_mid_gray_maps_to_imagenet_normalized_value_per_channel():
    out = images.preprocess(np.full((500, 700, 3), 128, np.uint8))
    expected = _normalized((128, 128, 128))
    for c in range(3):
        np.testing.assert_allclose(out[c], expected[c], atol=1e-6)
    # Sanity of the constants themselves: 128/255 sits just above the mean in every channel.
    assert expected[0] == pytest.approx((128 / 255 - 0.485) / 0.229, abs=1e-6)


def test_shorter_side_resizes_to_256_like_torchvision_resize_int():
    assert images.RESIZE_SHORT_SIDE == 256  # floor(224 / 0.875), timm transforms_imagenet_eval
    # (width, height) → torchvision Resize(256): longer side int(256 * long / short).
    assert images._resized_size(1000, 872, 256) == (293, 256)  # hubble_deep_field
    assert images._resized_size(300, 451, 256) == (256, 384)
    assert images._resized_size(512, 512, 256) == (256, 256)


def test_crop_is_central_on_a_wide_image():
    img = np.zeros((300, 400, 3), np.uint8)
    img[:, :40] = 255  # left strip: cut away by the centre crop
    img[140:160, 190:210] = (255, 0, 0)  # red marker at the centre
    out = images.preprocess(img)
    red, black = _normalized((255, 0, 0)), _normalized((0, 0, 0))
    np.testing.assert_allclose(out[:, 112, 112], red, atol=1e-5)
    np.testing.assert_allclose(out[:, 112, 0], black, atol=1e-5)  # strip gone
    np.testing.assert_allclose(out[:, 0, 112], black, atol=1e-5)


def test_crop_is_central_on_a_tall_image():
    img = np.zeros((400, 300, 3), np.uint8)
    img[:40] = 255  # top strip
    img[190:210, 140:160] = (0, 0, 255)
    out = images.preprocess(img)
    np.testing.assert_allclose(out[:, 112, 112], _normalized((0, 0, 255)), atol=1e-5)
    np.testing.assert_allclose(out[:, 0, 112], _normalized((0, 0, 0)), atol=1e-5)


def test_gray_input_becomes_three_equal_channels_before_normalizing():
    gray = np.random.default_rng(0).integers(0, 256, size=(260, 300), dtype=np.uint8)
    out = images.preprocess(gray)
    rgb = images.preprocess(np.repeat(gray[:, :, None], 3, axis=2))
    np.testing.assert_array_equal(out, rgb)
    # Undo the normalisation: the three channels carry the same pixels.
    pixels = out * STD[:, None, None] + MEAN[:, None, None]
    np.testing.assert_allclose(pixels[0], pixels[1], atol=1e-6)
    np.testing.assert_allclose(pixels[1], pixels[2], atol=1e-6)


def test_rgba_input_drops_alpha_like_pil_convert_rgb():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(240, 320, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.zeros((240, 320, 1), np.uint8)], axis=2)  # fully transparent
    np.testing.assert_array_equal(images.preprocess(rgba), images.preprocess(rgb))


def test_float_input_in_unit_range_matches_uint8():
    rgb = np.random.default_rng(2).integers(0, 256, size=(256, 256, 3), dtype=np.uint8)
    np.testing.assert_allclose(
        images.preprocess(rgb.astype(np.float64) / 255.0), images.preprocess(rgb), atol=1e-6
    )


@pytest.mark.parametrize("shape", [(10,), (10, 10, 2), (10, 10, 5)])
def test_preprocess_rejects_non_image_arrays(shape):
    with pytest.raises(ValueError, match="image"):
        images.preprocess(np.zeros(shape, np.uint8))


def test_every_sample_image_is_bundled_in_the_scikit_image_wheel():
    # Read from the package folder: no pooch, no network (skimage.data would download others).
    folder = images.skimage_data_dir()
    for name in images.SAMPLE_IMAGES:
        assert (folder / name).is_file(), name
        img = images.load_image(name)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3, name
        assert min(img.shape[:2]) >= 224, name


def test_load_samples_is_cached_read_only_and_normalized():
    batch = images.load_samples()
    assert batch is images.load_samples()
    assert batch.shape == (len(images.SAMPLE_IMAGES), *serving.INPUT_SHAPE)
    assert batch.dtype == np.float32 and not batch.flags.writeable
    assert np.isfinite(batch).all()
    # Real photographs after ImageNet normalisation: roughly zero-mean, unit-scale values.
    assert abs(float(batch.mean())) < 1.0 and 0.5 < float(batch.std()) < 2.0
    # Distinct images, not one picture repeated.
    assert len({batch[i].tobytes() for i in range(len(batch))}) == len(batch)


def test_sample_batch_cycles_without_rng_and_draws_with_one():
    samples = images.load_samples()
    n = len(samples) + 2
    cycled = images.sample_batch(n)
    assert cycled.shape == (n, *serving.INPUT_SHAPE)
    np.testing.assert_array_equal(cycled[len(samples)], samples[0])
    drawn = images.sample_batch(5, np.random.default_rng(0))
    assert drawn.shape == (5, *serving.INPUT_SHAPE) and drawn.flags.writeable
    with pytest.raises(ValueError):
        images.sample_batch(0)
