"""On-device input pipeline: uint8 images -> normalised, randomly cropped and flipped floats.

It runs inside the jitted train step so the host only gathers uint8 batches. Each example's
randomness comes from its position in the global batch, so a step gives the same result on
one device or many.
"""
from collections.abc import Sequence

import jax
import jax.numpy as jnp


def normalize(images: jnp.ndarray, mean: Sequence[float], std: Sequence[float]) -> jnp.ndarray:
    """uint8 [B, H, W, C] -> float32 (x / 255 - mean) / std, per channel."""
    x = images.astype(jnp.float32) / 255.0
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def random_crop_flip(images: jnp.ndarray, keys: jax.Array, padding: int, flip: bool) -> jnp.ndarray:
    """Zero-pads by `padding`, crops back to the input size at a random offset, maybe flips.

    Zero padding happens before normalisation, as torchvision's RandomCrop pads the raw image.
    `keys` holds one PRNG key per example.
    """
    if padding == 0 and not flip:
        return images
    height, width = images.shape[1:3]

    def one(image, key):
        crop_key, flip_key = jax.random.split(key)
        if padding:
            padded = jnp.pad(image, ((padding, padding), (padding, padding), (0, 0)))
            dy, dx = jax.random.randint(crop_key, (2,), 0, 2 * padding + 1)
            image = jax.lax.dynamic_slice(padded, (dy, dx, 0), image.shape)
        if flip:
            image = jnp.where(jax.random.bernoulli(flip_key), image[:, ::-1], image)
        return image

    return jax.vmap(one)(images, keys).reshape(images.shape[0], height, width, -1)


def example_keys(key: jax.Array, global_indices: jnp.ndarray) -> jax.Array:
    """One key per example, from its index in the global batch."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(global_indices)


# ---------------------------------------------------------------------------------------------
# Images stored larger than the network's input (CUB, MIT-67, ImageNet-style): crops.

# Inception's / torchvision's RandomResizedCrop aspect ratios (width / height).
RESIZED_CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)


def input_shape(augment_config, stored: Sequence[int]) -> tuple[int, int, int]:
    """The network's input (H, W, C) for images stored as `stored` (H, W, C): crops of
    `augment.crop_size`, or Inception-style crops of the stored height, or the stored shape."""
    height, width, channels = stored
    size = augment_config.get("crop_size")
    if size is None:
        if augment_config.get("random_resized_scale"):
            return min(height, width), min(height, width), channels
        return height, width, channels
    if not 0 < size <= min(height, width):
        raise ValueError(f"augment.crop_size={size} must be in 1..{min(height, width)}, the "
                         "stored images' size (set data.image_size to store them larger).")
    return int(size), int(size), channels


def random_crop_flip_to(images: jnp.ndarray, keys: jax.Array, size: int, padding: int,
                        flip: bool) -> jnp.ndarray:
    """As `random_crop_flip`, but the crop is `size` x `size` (at most the padded input's)."""
    def one(image, key):
        crop_key, flip_key = jax.random.split(key)
        padded = jnp.pad(image, ((padding, padding), (padding, padding), (0, 0)))
        dy = jax.random.randint(crop_key, (), 0, padded.shape[0] - size + 1)
        dx = jax.random.randint(jax.random.fold_in(crop_key, 1), (), 0,
                                padded.shape[1] - size + 1)
        image = jax.lax.dynamic_slice(padded, (dy, dx, 0), (size, size, image.shape[-1]))
        return jnp.where(jax.random.bernoulli(flip_key), image[:, ::-1], image) if flip \
            else image

    return jax.vmap(one)(images, keys)


def random_resized_crop_flip(images: jnp.ndarray, keys: jax.Array, size: int,
                             scale: Sequence[float], flip: bool) -> jnp.ndarray:
    """Inception-style crops (torchvision's RandomResizedCrop): per image a box of a random
    share `scale` of the area and aspect ratio in RESIZED_CROP_RATIO (log-uniform), clipped to
    the image (torchvision instead retries ten times, then takes a centre crop), resized
    bilinearly (antialiased) to `size` x `size`, maybe flipped. float32 in the input's range."""
    height, width = images.shape[1:3]
    low, high = float(scale[0]), float(scale[1])
    log_ratio = jnp.log(jnp.asarray(RESIZED_CROP_RATIO, jnp.float32))

    def one(image, key):
        area_key, ratio_key, y_key, x_key, flip_key = jax.random.split(key, 5)
        area = height * width * jax.random.uniform(area_key, (), minval=low, maxval=high)
        ratio = jnp.exp(jax.random.uniform(ratio_key, (), minval=log_ratio[0],
                                           maxval=log_ratio[1]))
        w = jnp.clip(jnp.round(jnp.sqrt(area * ratio)), 1, width)
        h = jnp.clip(jnp.round(jnp.sqrt(area / ratio)), 1, height)
        y0 = jax.random.uniform(y_key, ()) * (height - h)
        x0 = jax.random.uniform(x_key, ()) * (width - w)
        crop_scale = jnp.stack([size / h, size / w])
        out = jax.image.scale_and_translate(
            image.astype(jnp.float32), (size, size, image.shape[-1]), (0, 1), crop_scale,
            -jnp.stack([y0, x0]) * crop_scale, method="linear")
        return jnp.where(jax.random.bernoulli(flip_key), out[:, ::-1], out) if flip else out

    return jax.vmap(one)(images, keys)


def center_crop(images: jnp.ndarray, size: int) -> jnp.ndarray:
    """The central `size` x `size` of each image (the test-time crop)."""
    height, width = images.shape[1:3]
    top, left = (height - size) // 2, (width - size) // 2
    return images[:, top:top + size, left:left + size]


def resize(images: jnp.ndarray, size: int) -> jnp.ndarray:
    """Bilinear (antialiased) resize of a float batch to `size` x `size`: a teacher's own
    input size."""
    if images.shape[1] == images.shape[2] == size:
        return images
    return jax.image.resize(images, (images.shape[0], size, size, images.shape[-1]), "linear")
