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
