"""Reproduces XLA CPU's all-reduce abort when a loop dispatches steps without bound.

A tiny data-parallel step (one matmul, two `pmean`s) on two simulated CPU devices is
dispatched for `--seconds`, three ways:

  unbounded  never waits: every step is queued behind the last
  device_sum adds each step's metrics on the device (vid-jax's loop before MetricSums)
  bounded    `train.MetricSums`: adding step n waits for step n-1

On this 2-core machine, three 90 s runs of each while another job used both cores:
`unbounded` aborted in 2 of 3 and `device_sum` in 1 of 3, with "Termination timeout for
`all reduce ...` of 40 seconds exceeded ... only 1 of them arrived" (exit 134); `bounded` ran
all three to the end (119,178-126,765 steps). It is a race, so one clean run proves nothing:
repeat it. A finished run prints its step count; an aborted one exits with 134.

  .venv/bin/python benchmarks/dispatch_depth.py --mode=bounded --seconds=120
"""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=2").strip()

import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from vid_jax.train import MetricSums  # noqa: E402

_MODE = flags.DEFINE_enum("mode", "bounded", ["unbounded", "device_sum", "bounded"],
                          "How the loop waits for its steps.")
_SECONDS = flags.DEFINE_float("seconds", 120.0, "How long to dispatch steps.")


def main(argv):
    del argv
    mesh = jax.make_mesh((2,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))

    def body(w, x):
        y = jnp.tanh(x @ w)
        grad = jax.lax.pmean(x.T @ y, "data")
        return w - 1e-3 * grad, {"loss": jax.lax.pmean(jnp.mean(y ** 2), "data")}

    step = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P(), P("data")),
                                 out_specs=(P(), P())))
    w = jax.device_put(jnp.full((64, 64), 0.01), NamedSharding(mesh, P()))
    rng = np.random.default_rng(0)
    sums, device_totals, last = MetricSums(), None, None
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < _SECONDS.value:
        x = jax.device_put(rng.random((32, 64), np.float32), NamedSharding(mesh, P("data")))
        w, metrics = step(w, x)
        if _MODE.value == "unbounded":
            last = metrics
        elif _MODE.value == "device_sum":
            device_totals = metrics if device_totals is None else jax.tree.map(
                jnp.add, device_totals, metrics)
        else:
            sums.add(metrics)
        steps += 1
    final = {"unbounded": lambda: jax.device_get(last),
             "device_sum": lambda: jax.device_get(device_totals),
             "bounded": sums.result}[_MODE.value]()
    print(f"{_MODE.value}: {steps} steps in {time.perf_counter() - t0:.1f} s, finished "
          f"({final})")


if __name__ == "__main__":
    app.run(main)
