"""The data-parallel mesh: one axis, `data`, over the devices a run uses."""
from collections.abc import Sequence

import jax

AXIS = "data"


def make_mesh(num_devices: int | None = None,
              batch_sizes: Sequence[int] = ()) -> jax.sharding.Mesh:
    """A one-axis mesh over the first `num_devices` devices; by default over as many as
    divide every one of `batch_sizes` (all devices, when they divide them)."""
    devices = jax.devices()
    if num_devices:
        if num_devices > len(devices):
            raise ValueError(f"num_devices={num_devices}, but JAX sees only {len(devices)}.")
        devices = devices[:num_devices]
    else:
        # E.g. 6 host devices (vid_jax.host: one per core) and batch 64: use 4 of them.
        count = max(n for n in range(1, len(devices) + 1)
                    if all(b % n == 0 for b in batch_sizes))
        devices = devices[:count]
    return jax.make_mesh((len(devices),), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=devices)


def check_batch(name: str, batch_size: int, mesh: jax.sharding.Mesh) -> None:
    """A batch size the mesh can split evenly, or a ValueError saying what to use."""
    if batch_size <= 0:
        raise ValueError(f"config.{name} must be positive; got {batch_size}.")
    if batch_size % mesh.size:
        raise ValueError(f"config.{name}={batch_size} is not divisible by the {mesh.size} "
                         f"devices; use a multiple of {mesh.size}.")
