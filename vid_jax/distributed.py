"""Several processes, one run: JAX's multi-controller model (`jax.distributed`).

Every process runs the same command, one per host (or several on one host); JAX joins their
devices into one set, and the trainer's mesh spans them all (`training.mesh.make_mesh`: the
same number of devices from each process). Every process draws the same global batches (the
sampler is a pure function of (seed, step)) and places only its own rows of each on its own
devices (`training.mesh.shard_rows`); the step's all-reduces run across processes (gloo on
CPUs, NCCL on GPUs, ICI on TPUs). A run gives the same result however its devices are spread
over processes, up to float round-off.

The first process (`is_primary`) writes the workdir's files: metrics, TensorBoard,
config.json, config_changes.jsonl, summary.json and grid reports. Orbax checkpoints are saved
and restored by every process together (orbax coordinates them), so the processes must share
the workdir's file system (NFS, a GCS bucket through FUSE...), as orbax requires.

This module imports no JAX at import time (launch.py imports it before XLA_FLAGS are final).
"""
import os

# The environment's fallback for launch.py's flags. JAX itself reads JAX_COORDINATOR_ADDRESS;
# the other two are named after it.
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} must be an integer.") from None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, auto: bool = False,
               heartbeat_timeout_seconds: int | None = None) -> bool:
    """Joins this process to the others of its job (`jax.distributed.initialize`) when asked
    to; returns whether it did. Call it before anything else uses JAX.

    Asked to means: `auto` (JAX detects the job from the environment of Cloud TPU pods,
    SLURM and Open MPI), or any of the three values, given or in the environment
    (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID); JAX detects those left
    unset where it can. `heartbeat_timeout_seconds` (None: JAX's default): how long a process
    that stops answering may go before its peers stop with an error instead of waiting.
    """
    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
    given = {k: v for k, v in (("coordinator_address", coordinator_address),
                               ("num_processes", num_processes), ("process_id", process_id))
             if v is not None}
    if not (auto or given):
        return False
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"num_processes={num_processes} (--num_processes or "
                         f"{ENV_NUM_PROCESSES}) must be at least 1.")
    if process_id is not None and num_processes is not None and \
            not 0 <= process_id < num_processes:
        raise ValueError(f"process_id={process_id} (--process_id or {ENV_PROCESS_ID}) must be "
                         f"in 0..{num_processes - 1}, one per process of the {num_processes}.")
    if heartbeat_timeout_seconds is not None:
        given["heartbeat_timeout_seconds"] = heartbeat_timeout_seconds
    import jax
    try:
        jax.distributed.initialize(**given)
    except ValueError as error:
        if not ("coordinator_address" in str(error) and coordinator_address is None):
            raise
        raise ValueError("JAX found no job in this environment (a Cloud TPU pod, SLURM, "
                         "Open MPI): give --coordinator_address (or JAX_COORDINATOR_ADDRESS), "
                         "--num_processes and --process_id.") from None
    return True


def process_index() -> int:
    import jax
    return jax.process_index()


def process_count() -> int:
    import jax
    return jax.process_count()


def is_primary() -> bool:
    """Whether this process writes the workdir's files (the first; the only one alone)."""
    return process_index() == 0


def sync(name: str) -> None:
    """Waits until every process reaches the point called `name` (nothing when alone): after
    the first process writes files that the others read next."""
    if process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)
