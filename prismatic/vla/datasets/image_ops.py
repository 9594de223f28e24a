"""Image decode / resize / augmentation, shared by training (tf.data) and evaluation (numpy).

Resize (facts §6.2, dlimp `resize_image`): `tf.image.resize(lanczos3, antialias=True)`, round, clip, uint8.
`resize_image` (numpy in, numpy out) runs the very same TF op, so the policy sees identical pixels at
training and at evaluation time. `jpeg_roundtrip=True` additionally reproduces upstream's evaluation path,
which JPEG-encodes the simulator frame first because the training images were stored as JPEG.

Augmentation (facts §6.2, applied in this order): random resized crop (90 % area, square, resized back),
brightness ±0.2, contrast [0.8, 1.2], saturation [0.8, 1.2], hue ±0.05. Every random op is STATELESS and
seeded by the caller with a per-element seed, so an element's augmentation depends only on (seed, element
position) — never on how many elements came before in this process. That is what makes `skip_samples`
resume exact.
"""

from __future__ import annotations

import numpy as np

from prismatic.vla.datasets._tf import get_tf

CROP_AREA = 0.9  # random resized crop keeps 90 % of the area
BRIGHTNESS_DELTA = 0.2
CONTRAST_RANGE = (0.8, 1.2)
SATURATION_RANGE = (0.8, 1.2)
HUE_DELTA = 0.05
_NUM_AUG_OPS = 5


def decode_image_tf(encoded):
    """Encoded image bytes (scalar tf.string) -> uint8 (H, W, 3)."""
    tf = get_tf()
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False, dtype=tf.uint8)
    image.set_shape([None, None, 3])
    return image


def resize_image_tf(image, size: int):
    """uint8 (..., H, W, 3) -> uint8 (..., size, size, 3): lanczos3 + antialias, round, clip."""
    tf = get_tf()
    resized = tf.image.resize(image, (size, size), method="lanczos3", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def _random_resized_crop(image, seed, area: float):
    """Square crop of `area` of the image at a random position, resized back (bilinear) to the input size.
    image: float32 (H, W, 3) in [0, 1]."""
    tf = get_tf()
    side = tf.sqrt(tf.constant(area, tf.float32))  # crop side as a fraction of the image side (ratio 1)
    offsets = tf.random.stateless_uniform([2], seed=seed, minval=0.0, maxval=1.0) * (1.0 - side)
    box = tf.stack([offsets[0], offsets[1], offsets[0] + side, offsets[1] + side])[None]  # (1, 4) y0 x0 y1 x1
    size = tf.shape(image)[:2]
    return tf.image.crop_and_resize(image[None], box, tf.zeros([1], tf.int32), size)[0]


def augment_image_tf(image, seed):
    """Training augmentation of one uint8 (H, W, 3) image with an int64 (2,) stateless seed -> uint8."""
    tf = get_tf()
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=_NUM_AUG_OPS)
    x = tf.image.convert_image_dtype(image, tf.float32)  # [0, 1]
    x = _random_resized_crop(x, seeds[0], CROP_AREA)
    # Clip after each photometric op, as dlimp does, so the next op sees a valid image.
    x = tf.clip_by_value(tf.image.stateless_random_brightness(x, BRIGHTNESS_DELTA, seeds[1]), 0.0, 1.0)
    x = tf.clip_by_value(tf.image.stateless_random_contrast(x, *CONTRAST_RANGE, seeds[2]), 0.0, 1.0)
    x = tf.clip_by_value(tf.image.stateless_random_saturation(x, *SATURATION_RANGE, seeds[3]), 0.0, 1.0)
    x = tf.clip_by_value(tf.image.stateless_random_hue(x, HUE_DELTA, seeds[4]), 0.0, 1.0)
    return tf.cast(tf.round(x * 255.0), tf.uint8)


def resize_image(image: np.ndarray, size: int, *, jpeg_roundtrip: bool = False) -> np.ndarray:
    """uint8 (H, W, 3) (or (N, H, W, 3)) numpy -> uint8 (size, size, 3): THE resize of training and eval.

    jpeg_roundtrip: JPEG-encode/decode first (quality 95, tfds's encoding), as upstream's LIBERO evaluation
    does to match the JPEG-stored training frames.
    """
    tf = get_tf()
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (3, 4) or image.shape[-1] != 3:
        raise ValueError(f"resize_image expects uint8 (H, W, 3) or (N, H, W, 3), got {image.dtype} {image.shape}")
    if size <= 0:
        raise ValueError(f"resize_image: size must be positive, got {size}")
    x = tf.convert_to_tensor(image)
    if jpeg_roundtrip:
        frames = x if image.ndim == 4 else x[None]
        frames = tf.stack([tf.io.decode_jpeg(tf.io.encode_jpeg(f, quality=95), channels=3) for f in frames])
        x = frames if image.ndim == 4 else frames[0]
    return resize_image_tf(x, size).numpy()
