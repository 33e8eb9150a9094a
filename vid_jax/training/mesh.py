"""The data-parallel mesh: one axis, `data`, over the devices a run uses, in one process or
several (`vid_jax.distributed`); and the global arrays each process builds on it from its
own part of the data."""
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "data"


def _devices_by_process() -> list[list[jax.Device]]:
    """Every device JAX sees, grouped by the process that holds it, in process order."""
    groups: dict[int, list[jax.Device]] = {}
    for device in jax.devices():
        groups.setdefault(device.process_index, []).append(device)
    return [groups[p] for p in sorted(groups)]


def make_mesh(num_devices: int | None = None,
              batch_sizes: Sequence[int] = ()) -> jax.sharding.Mesh:
    """A one-axis mesh over `num_devices` devices; by default over as many as divide every
    one of `batch_sizes` (all devices, when they divide them).

    The same number comes from every process, so each takes part in every step: of several
    processes, `num_devices` must be a multiple of their number (one process: the first
    `num_devices` devices)."""
    groups = _devices_by_process()
    processes, local = len(groups), min(len(g) for g in groups)
    if num_devices:
        total = sum(len(g) for g in groups)
        if num_devices > total:
            raise ValueError(f"num_devices={num_devices}, but JAX sees only {total}.")
        if num_devices % processes or num_devices // processes > local:
            raise ValueError(f"num_devices={num_devices} cannot be spread evenly over the "
                             f"{processes} processes ({local} devices each); use a multiple "
                             f"of {processes} up to {processes * local}.")
        per_process = num_devices // processes
    else:
        # E.g. 6 host devices (vid_jax.host: one per core) and batch 64: use 4 of them.
        # None divides a batch that the processes cannot split: check_batch says so.
        per_process = max([k for k in range(1, local + 1)
                           if all(b % (k * processes) == 0 for b in batch_sizes)], default=1)
    devices = [d for group in groups for d in group[:per_process]]
    return jax.make_mesh((len(devices),), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=devices)


def check_batch(name: str, batch_size: int, mesh: jax.sharding.Mesh) -> None:
    """A batch size the mesh can split evenly, or a ValueError saying what to use."""
    if batch_size <= 0:
        raise ValueError(f"config.{name} must be positive; got {batch_size}.")
    if batch_size % mesh.size:
        raise ValueError(f"config.{name}={batch_size} is not divisible by the {mesh.size} "
                         f"devices; use a multiple of {mesh.size}.")


def process_rows(mesh: jax.sharding.Mesh, batch_size: int) -> np.ndarray:
    """The rows of a global batch of `batch_size`, split over the mesh, that this process's
    devices hold, in the order `jax.make_array_from_process_local_data` takes them (all of
    them in a process alone)."""
    sharding = NamedSharding(mesh, P(AXIS))
    spans = sorted({(s.start or 0, batch_size if s.stop is None else s.stop)
                    for s, *_ in sharding.addressable_devices_indices_map((batch_size,)).values()})
    return np.concatenate([np.arange(start, stop) for start, stop in spans])


def shard_rows(mesh: jax.sharding.Mesh, rows: Sequence[np.ndarray],
               batch_size: int) -> tuple[jax.Array, ...]:
    """Global arrays of `batch_size` rows split over the mesh, built from this process's
    `rows` of them (`process_rows`): each process loads and places only its own part."""
    sharding = NamedSharding(mesh, P(AXIS))
    return tuple(jax.make_array_from_process_local_data(sharding, np.asarray(r),
                                                        (batch_size, *np.shape(r)[1:]))
                 for r in rows)


def replicate(mesh: jax.sharding.Mesh, tree: Any) -> Any:
    """`tree` (a state, variables; the same in every process) replicated on every device of
    the mesh. It goes through the host: across processes, a device_put of arrays that live on
    one process's device builds arrays that orbax cannot save (JAX 0.10)."""
    sharding = NamedSharding(mesh, P())
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(
        sharding, np.asarray(x), np.shape(x)), jax.device_get(tree))
