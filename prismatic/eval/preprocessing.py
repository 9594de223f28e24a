"""Policy-side image preprocessing for evaluation: make simulator frames look like the training frames.

Training frames went: 256 px render, rotated 180 degrees -> JPEG in the RLDS files -> decode -> lanczos3
antialiased resize to the model's input size (`prismatic.vla.datasets.image_ops.resize_image`) -> (with
image_aug) a random 0.9-area crop resized back. Evaluation therefore does (facts §7.2, upstream's
`resize_image_for_policy` + `center_crop_image`):

    rotated frame (from the worker) -> JPEG encode/decode (TF, quality 95 like tfds) -> lanczos3 resize
        (both: `resize_image(..., jpeg_roundtrip=True)`, the data pipeline's own function)
                                    -> [0.9-area centre crop, bilinear crop_and_resize back to size]

TensorFlow runs here, in the MAIN process only (never in a simulator worker), imported lazily through the
data pipeline's `get_tf` (after torch, GPUs hidden from it).

Known, bounded difference from training (upstream has it too): the training crop converts back to uint8 with
round(x * 255) (`image_ops.augment_image_tf`), upstream's evaluation crop with TF's saturating
convert_image_dtype (trunc(x * 255.5)); pixels differ by at most one intensity level. Without the crop the
evaluation pixels equal the training pixels exactly (tests/eval/test_preprocessing.py).
"""

from __future__ import annotations

import numpy as np

CENTER_CROP_SCALE = 0.9  # area fraction kept by the centre crop (the training crop's scale)


def center_crop(image: np.ndarray, crop_scale: float = CENTER_CROP_SCALE) -> np.ndarray:
    """Keep the central `crop_scale` of the area and resize it back to the input size (bilinear), exactly as
    upstream's `center_crop_image`: float [0, 1] -> tf.image.crop_and_resize -> clip -> saturating uint8
    conversion (x * 255.5 truncated). uint8 (S, S, 3) -> uint8 (S, S, 3)."""
    from prismatic.vla.datasets._tf import get_tf

    tf = get_tf()
    image = _check_image(image)
    # Box arithmetic in float32 TF ops, as upstream's crop_and_resize helper does it.
    side = tf.clip_by_value(tf.sqrt(tf.constant(crop_scale, tf.float32)), 0.0, 1.0)
    offset = (1.0 - side) / 2.0
    boxes = tf.reshape(tf.stack([offset, offset, offset + side, offset + side]), (1, 4))
    x = tf.image.convert_image_dtype(tf.convert_to_tensor(image), tf.float32)[None]
    x = tf.image.crop_and_resize(x, boxes, tf.zeros([1], dtype=tf.int32), image.shape[:2])[0]
    x = tf.clip_by_value(x, 0.0, 1.0)
    return tf.image.convert_image_dtype(x, tf.uint8, saturate=True).numpy()


def preprocess_image(image: np.ndarray, size: int, use_center_crop: bool) -> np.ndarray:
    """A rotated simulator frame (uint8 (H, W, 3)) -> what the model's processor takes (uint8 (size, size, 3))."""
    from prismatic.vla.datasets.image_ops import resize_image

    resized = resize_image(_check_image(image), size, jpeg_roundtrip=True)
    return center_crop(resized) if use_center_crop else resized


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    return np.ascontiguousarray(image)
