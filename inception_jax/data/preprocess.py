"""Inception-style image preprocessing in TensorFlow ops (TF-slim's inception_preprocessing, made stateless).

Every random choice takes an explicit `seed` (a shape-[2] int tensor derived from the run's seed and the
example's position in the stream), so a pipeline gives the same images for the same seed however many
threads decode them, and a resumed run sees exactly the images it would have seen.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class TrainAugment:
  """Training-time augmentation of the Inception papers.

  Attributes:
    area_range: fraction of the image area a random crop covers (8%–100% in the papers).
    aspect_ratio_range: crop width/height range (3/4–4/3).
    flip: random left-right flip.
    color_distort: random brightness/saturation/hue/contrast (TF-slim's fast mode).
  """
  area_range: tuple[float, float] = (0.08, 1.0)
  aspect_ratio_range: tuple[float, float] = (3 / 4, 4 / 3)
  flip: bool = True
  color_distort: bool = False


def _to_rgb(image: tf.Tensor) -> tf.Tensor:
  """Grayscale is tiled to three channels; an alpha channel is dropped."""
  channels = tf.shape(image)[-1]
  image = tf.cond(channels == 1, lambda: tf.tile(image, [1, 1, 3]), lambda: image[..., :3])
  return tf.ensure_shape(image, [None, None, 3])


def _decode_window(image: tf.Tensor, encoded: bool, offset: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
  """Crops [offset, offset+size) (height, width) out of a raw or encoded image.

  JPEG bytes go through the fused decode-and-crop, which decodes only the window; other encodings are
  decoded whole, then cropped.
  """
  if not encoded:
    return tf.slice(image, tf.concat([offset, [0]], 0), tf.concat([size, [-1]], 0))
  window = tf.stack([offset[0], offset[1], size[0], size[1]])
  return tf.cond(
      tf.io.is_jpeg(image),
      lambda: _to_rgb(tf.image.decode_and_crop_jpeg(image, window, channels=3)),
      lambda: tf.slice(_to_rgb(tf.io.decode_image(image, channels=0, expand_animations=False)),
                       tf.concat([offset, [0]], 0), tf.concat([size, [-1]], 0)))


def image_shape(image: tf.Tensor, encoded: bool) -> tf.Tensor:
  """(height, width) of a raw image tensor or of encoded bytes (JPEG headers are read, not decoded)."""
  if not encoded:
    return tf.shape(image)[:2]
  return tf.cond(tf.io.is_jpeg(image), lambda: tf.io.extract_jpeg_shape(image)[:2],
                 lambda: tf.shape(tf.io.decode_image(image, channels=0, expand_animations=False))[:2])


def normalize(image: tf.Tensor, mean, std) -> tf.Tensor:
  """uint8-range pixels to float32 ((x/255 - mean) / std); mean = std = 0.5 gives the Inception [-1, 1]."""
  image = tf.cast(image, tf.float32) / 255.0
  return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def distorted_crop_window(shape: tf.Tensor, seed: tf.Tensor, augment: TrainAugment):
  """A random crop covering `area_range` of the image with `aspect_ratio_range` (whole image on failure)."""
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.concat([shape, [3]], 0),
      bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
      seed=seed,
      min_object_covered=augment.area_range[0],
      aspect_ratio_range=augment.aspect_ratio_range,
      area_range=augment.area_range,
      max_attempts=10,
      use_image_if_no_bounding_boxes=True)
  return begin[:2], size[:2]


def _color_distort(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Random brightness, saturation, hue and contrast on [0, 1] images (TF-slim's fast ordering)."""
  seeds = tf.random.experimental.stateless_split(seed, 4)
  image = tf.image.stateless_random_brightness(image, 32.0 / 255.0, seeds[0])
  image = tf.image.stateless_random_saturation(image, 0.5, 1.5, seeds[1])
  image = tf.image.stateless_random_hue(image, 0.2, seeds[2])
  image = tf.image.stateless_random_contrast(image, 0.5, 1.5, seeds[3])
  return tf.clip_by_value(image, 0.0, 1.0)


def train_image(image: tf.Tensor, seed: tf.Tensor, size: int, mean, std, augment: TrainAugment,
                encoded: bool) -> tf.Tensor:
  """Random-area crop → resize to size×size → flip → (colour distortion) → normalize. Returns float32."""
  crop_seed, flip_seed, color_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
  offset, window = distorted_crop_window(image_shape(image, encoded), crop_seed, augment)
  image = _decode_window(image, encoded, offset, window)
  if not encoded:
    image = _to_rgb(image)
  image = tf.image.resize(image, [size, size], method='bilinear', antialias=False)
  if augment.flip:
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  if augment.color_distort:
    image = _color_distort(image / 255.0, color_seed) * 255.0
  return normalize(tf.clip_by_value(image, 0.0, 255.0), mean, std)


def eval_image(image: tf.Tensor, size: int, mean, std, crop_pct: float, encoded: bool) -> tf.Tensor:
  """Central square of `crop_pct` of the shorter side (87.5% for Inception), resized to size×size.

  Same as timm/torchvision's "resize the shorter side to size/crop_pct, then centre-crop size×size".
  """
  shape = image_shape(image, encoded)
  side = tf.cast(tf.round(crop_pct * tf.cast(tf.reduce_min(shape), tf.float32)), tf.int32)
  side = tf.maximum(side, 1)
  offset = (shape - side) // 2
  image = _decode_window(image, encoded, offset, tf.stack([side, side]))
  if not encoded:
    image = _to_rgb(image)
  image = tf.image.resize(image, [size, size], method='bilinear', antialias=False)
  return normalize(tf.clip_by_value(image, 0.0, 255.0), mean, std)
