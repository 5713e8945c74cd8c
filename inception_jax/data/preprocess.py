"""Inception-style image preprocessing in TensorFlow ops (TF-slim's inception_preprocessing, made stateless).

The functions return uint8 pixels: batches cross to the accelerators at a quarter of float32's bytes, and
the train and eval steps make the model's input of them on the devices (`ImageSpec.normalize`, as timm's
GPU prefetcher and DALI normalise on the GPU). The rounding after the resize is that of torchvision's and
Keras's PIL resizes.

Every random choice takes an explicit `seed` (a shape-[2] int tensor derived from the run's seed and the
example's position in the stream), so a pipeline gives the same images for the same seed however many
threads decode them, and a resumed run sees exactly the images it would have seen.
"""

from __future__ import annotations

import dataclasses

from inception_jax.data import import_tensorflow

tf = import_tensorflow()


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


def _crop(image: tf.Tensor, encoded: bool, window_of) -> tf.Tensor:
  """The window `window_of(shape)` -> (offset, size), both (height, width), of a raw or encoded image, RGB.

  JPEG bytes: the shape comes from the headers and the fused decode-and-crop decodes only the window. Other
  encodings are decoded once, whole, then cropped. One tf.cond decides for the whole crop: each costs a
  tf.data map about 0.05 ms per image, a few percent of a 299² training image.
  """
  def cut(pixels):
    offset, size = window_of(tf.shape(pixels)[:2])
    return tf.slice(pixels, tf.concat([offset, [0]], 0), tf.concat([size, [-1]], 0))

  if not encoded:
    return _to_rgb(cut(image))

  def jpeg():   # channels=3 always gives three channels: no _to_rgb
    offset, size = window_of(tf.io.extract_jpeg_shape(image)[:2])
    return tf.image.decode_and_crop_jpeg(image, tf.concat([offset, size], 0), channels=3)

  def other():
    return _to_rgb(cut(tf.io.decode_image(image, channels=0, expand_animations=False)))

  # tf.cond loses the channel count, which the batch's static shape needs.
  return tf.ensure_shape(tf.cond(tf.io.is_jpeg(image), jpeg, other), [None, None, 3])


def _pixels(image: tf.Tensor, clip: bool) -> tf.Tensor:
  """Float pixels in the uint8 range to uint8, rounded. A bilinear resize (no antialias) of uint8 pixels
  cannot leave [0, 255]: each output is a convex combination of inputs and float rounding is monotone, so
  the clip, two more passes over the image, is only made after colour distortion or for input that was not
  uint8. Rounding and casting cost 0.1 ms less per 299² image than host normalisation to float32, and the
  batch is a quarter of the bytes to copy (measured in docs/performance.md)."""
  if clip:
    image = tf.clip_by_value(image, 0.0, 255.0)
  return tf.cast(tf.round(image), tf.uint8)


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


def train_image(image: tf.Tensor, seed: tf.Tensor, size: int, augment: TrainAugment,
                encoded: bool) -> tf.Tensor:
  """Random-area crop → resize to size×size → flip → (colour distortion). Returns uint8 [size, size, 3]."""
  crop_seed, flip_seed, color_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
  clip = augment.color_distort or (not encoded and image.dtype != tf.uint8)
  image = _crop(image, encoded, lambda shape: distorted_crop_window(shape, crop_seed, augment))
  image = tf.image.resize(image, [size, size], method='bilinear', antialias=False)
  if augment.flip:
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  if augment.color_distort:
    image = _color_distort(image / 255.0, color_seed) * 255.0
  return _pixels(image, clip)


def eval_image(image: tf.Tensor, size: int, crop_pct: float, encoded: bool) -> tf.Tensor:
  """Central square of `crop_pct` of the shorter side (87.5% for Inception), resized to size×size (uint8).

  Same as timm/torchvision's "resize the shorter side to size/crop_pct, then centre-crop size×size".
  """
  clip = not encoded and image.dtype != tf.uint8

  def central(shape):
    side = tf.cast(tf.round(crop_pct * tf.cast(tf.reduce_min(shape), tf.float32)), tf.int32)
    side = tf.maximum(side, 1)
    return (shape - side) // 2, tf.stack([side, side])

  image = _crop(image, encoded, central)
  image = tf.image.resize(image, [size, size], method='bilinear', antialias=False)
  return _pixels(image, clip)
