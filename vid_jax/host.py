"""Settings of XLA's CPU backend that must be made before JAX starts (this module imports
no JAX).

One XLA CPU device runs a step's convolutions on an intra-op thread pool that, for the
small images of CIFAR, keeps only about 1.4 of 2 cores busy; splitting the host into one
device per core and running the step data-parallel over them (`vid_jax.training` does that
over all devices) keeps every core busy: a WRN-40-2 train step at batch 128 went from
30.5 to 46.4 images/s on 2 cores. On a machine with a GPU or TPU the flag only adds CPU
devices that JAX does not use by default.
"""
import os
import re

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
# Beyond this many, per-device batches get small and the all-reduces of BN statistics and
# gradients cost more than the extra cores give.
MAX_CPU_DEVICES = 8


def use_all_cpu_cores(max_devices: int = MAX_CPU_DEVICES) -> int | None:
    """Sets XLA_FLAGS so the host is one XLA CPU device per core (at most `max_devices`),
    unless XLA_FLAGS already sets a device count or JAX has already started.

    Returns the device count now in XLA_FLAGS, or None where JAX started before this call
    (too late to change it: it keeps the count it started with).
    """
    import sys
    flags = os.environ.get("XLA_FLAGS", "")
    given = re.search(rf"{DEVICE_COUNT_FLAG}=(\d+)", flags)
    if given:
        return int(given.group(1))
    if "jax" in sys.modules:
        return None
    count = max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                       else os.cpu_count() or 1, max_devices))
    os.environ["XLA_FLAGS"] = f"{flags} {DEVICE_COUNT_FLAG}={count}".strip()
    return count
