"""Real images for the load generator, preprocessed exactly as the served model expects.

Locust users send real photographs rather than random tensors so that request payloads (and,
on the GPU box, the model's numerics) match production. The photographs are the color sample
images that scikit-image ships *inside its wheel* (``skimage/data/*.png|jpg``); they are read
straight from the package folder with Pillow, so nothing is ever downloaded (scikit-image's
``pooch`` fetcher is never touched, and the load generator works offline and in CI).

Preprocessing reproduces timm's evaluation transform for ``mobilenetv4_conv_small`` (timm
``timm/models/mobilenetv3.py`` ``default_cfgs['mobilenetv4_conv_small.e2400_r224_in1k']``:
``_cfg(input_size=(3, 224, 224), crop_pct=0.875, interpolation='bicubic',
mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)``, built by
``timm.data.transforms_factory.transforms_imagenet_eval``):

1. ``PIL.Image.convert("RGB")`` (timm's loader; drops alpha, replicates gray),
2. ``Resize(floor(224 / 0.875) = 256)`` of the shorter side, bicubic (torchvision on PIL:
   the longer side becomes ``int(256 * long / short)``),
3. ``CenterCrop(224)`` (torchvision: offset ``int(round((size - 224) / 2))``),
4. ``ToTensor`` (uint8 / 255, HWC → CHW) and ``Normalize(mean, std)``.

The constants come from :mod:`ecrl.serving` so the emulator, Triton's config and Locust agree.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
from PIL import Image

from ecrl import serving

SAMPLE_IMAGES: tuple[str, ...] = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "color.png",
    "ihc.png",
)
"""The RGB photographs bundled in the scikit-image wheel (checked against skimage 0.26)."""

RESIZE_SHORT_SIDE = math.floor(serving.IMAGE_SIZE / serving.CROP_PCT)
"""256 for 224 / 0.875; timm uses ``math.floor`` (``transforms_imagenet_eval``)."""


def skimage_data_dir() -> Path:
    """The folder inside the installed scikit-image package that holds its bundled images."""
    import skimage.data

    return Path(skimage.data.__file__).parent


def _to_pil_rgb(img: np.ndarray) -> Image.Image:
    """An HxW (gray), HxWx3 (RGB) or HxWx4 (RGBA) array as an RGB PIL image.

    uint8 is taken as-is; floats are taken as scikit-image's [0, 1] convention.
    """
    arr = np.asarray(img)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ValueError(f"expected an HxW, HxWx3 or HxWx4 image, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating) and arr.dtype != np.bool_:
            raise ValueError(f"expected uint8 or float in [0, 1], got dtype {arr.dtype}")
        arr = np.round(np.clip(arr.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
    return Image.fromarray(arr).convert("RGB")


def _resized_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """torchvision ``Resize(int)``: shorter side to ``short_side``, longer side truncated."""
    if width <= height:
        return short_side, int(short_side * height / width)
    return int(short_side * width / height), short_side


def preprocess(img: np.ndarray) -> np.ndarray:
    """One image → the model input [3, 224, 224] float32 (timm's eval transform, see module doc)."""
    pil = _to_pil_rgb(img)
    pil = pil.resize(_resized_size(*pil.size, RESIZE_SHORT_SIDE), Image.Resampling.BICUBIC)
    crop = serving.IMAGE_SIZE
    width, height = pil.size
    top = round((height - crop) / 2.0)
    left = round((width - crop) / 2.0)
    pil = pil.crop((left, top, left + crop, top + crop))
    x = np.asarray(pil, dtype=np.float32) / np.float32(255.0)
    mean = np.asarray(serving.IMAGENET_MEAN, dtype=np.float32)
    std = np.asarray(serving.IMAGENET_STD, dtype=np.float32)
    x = (x - mean) / std
    out = np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)
    assert out.shape == serving.INPUT_SHAPE
    return out


def load_image(name: str) -> np.ndarray:
    """A bundled scikit-image sample (file name, e.g. ``"chelsea.png"``) as an HxWxC uint8 array."""
    path = skimage_data_dir() / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not bundled with the installed scikit-image")
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB") if im.mode not in ("L", "RGB", "RGBA") else im)


@functools.cache
def load_samples() -> np.ndarray:
    """All :data:`SAMPLE_IMAGES`, preprocessed: [n, 3, 224, 224] float32 (computed once)."""
    batch = np.stack([preprocess(load_image(n)) for n in SAMPLE_IMAGES])
    batch.setflags(write=False)
    return batch


def sample_batch(n: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """``n`` preprocessed images drawn from the samples: [n, 3, 224, 224] float32.

    Without ``rng`` the samples are cycled in order (deterministic); with one they are drawn
    with replacement, which is what a Locust user does per request.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    samples = load_samples()
    idx = np.arange(n) % len(samples) if rng is None else rng.integers(0, len(samples), size=n)
    return np.ascontiguousarray(samples[idx])
