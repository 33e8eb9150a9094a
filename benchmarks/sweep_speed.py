"""Runs that see the same batches, trained in one shared step against one after another.

`training.shared_train_step` computes the augmentation and the teacher's forward once and
updates R runs; trained one after another, each run computes them itself. For R = 1, 4, 8
runs of two sweeps, on random uint8 CIFAR-shaped images with the configs of Table 1a
(WRN-40-2 teacher with random, BN-calibrated variables; WRN-16-1 students):

  vid_i_weights  VID-I with R weights (0.1, 0.2, 0.5, 1, 2, 3, 5, 10: the first R)
  table1a_rows   the first R of Table 1a's eight rows in the order of ROWS (vid_i first, so
                 R=1 is VID-I alone; FitNet's hint stage, which runs alone, is not timed)

it times the main stage's step (compile excluded, each step blocked on): shared, the R runs'
step once; sequential, each run's own step, summed. The two alternate in `--rounds` rounds
(this VM's speed drifts 15-30% between minutes, so a ratio is taken from adjacent blocks):
each round times `--steps` shared steps, then `--steps` steps of each run's own. Reported: the
median over rounds of each side's seconds per step, images/s per run (R x batch / seconds),
and the median of the rounds' speed-ups (sequential over shared time) with their range.

  .venv/bin/python benchmarks/sweep_speed.py                 # writes benchmarks/results/
  .venv/bin/python benchmarks/sweep_speed.py --runs=1,4 --steps=2 --batch_sizes=64 --out=/tmp/s.json
"""
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from vid_jax import host  # noqa: E402  (imports no JAX)

host.use_all_cpu_cores()  # as launch.py does: one XLA CPU device per core

import jax  # noqa: E402
import numpy as np  # noqa: E402
import step_speed  # noqa: E402  (benchmarks/, beside this script)
import timing_worker  # noqa: E402
from absl import app, flags  # noqa: E402

from vid_jax import data, training  # noqa: E402

# Table 1a's rows, VID-I first so that every R includes the paper's method and R=1 is VID-I.
ROWS = ("vid_i", "student", "kd", "at", "nst", "fitnet", "kd+at", "kd+vid_i")
WEIGHTS = (0.1, 0.2, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0)  # 64 went NaN within 10 steps here
SWEEPS = ("vid_i_weights", "table1a_rows")

# --out, --batch_sizes, --steps, --warmup and --num_devices are step_speed's flags (defaults
# set in main's guard below); a .md table goes beside the JSON.
_RUNS = flags.DEFINE_list("runs", ["1", "4", "8"], "Numbers of runs R to time.")
_SWEEPS = flags.DEFINE_list("sweeps", list(SWEEPS), f"Which sweeps, of {SWEEPS}.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating rounds of shared and sequential.")


def sweep_configs(sweep: str, count: int, batch_size: int, num_devices: int | None) -> list:
    """The configs of the first `count` runs of a sweep."""
    configs = []
    for i in range(count):
        if sweep == "vid_i_weights":
            config = step_speed._load_config("cifar10_wrn16_1.py", "vid_i")
            config.distill.vid_i.weight = WEIGHTS[i]
        else:
            config = step_speed._load_config("cifar10_wrn16_1.py", ROWS[i])
        config.batch_size = batch_size
        config.num_devices = num_devices
        config.progress_bar = False
        configs.append(config)
    return configs


class _Timed:
    """A compiled step and the states it carries: `block(n)` runs n steps and returns the
    median seconds of one."""

    def __init__(self, step, states, batch, warmup: int):
        self.step, self.states, self.batch = step, states, batch
        self.block(warmup)

    def block(self, steps: int) -> float:
        times, metrics = [], ()
        for _ in range(steps):
            t0 = time.perf_counter()
            self.states, metrics = jax.block_until_ready(self.step(self.states, self.batch))
            times.append(time.perf_counter() - t0)
        losses = [float(m["loss"])
                  for m in (metrics if isinstance(metrics, tuple) else [metrics])]
        if not all(np.isfinite(losses)):
            raise FloatingPointError(f"a loss is not finite: {losses}")
        return float(np.median(times)) if times else 0.0


def measure(sweep: str, count: int, batch_size: int, steps: int, warmup: int,
            rounds: int = 3, num_devices: int | None = None) -> dict:
    configs = sweep_configs(sweep, count, batch_size, num_devices)
    _, teacher_variables = step_speed.init_teacher(configs[0], seed=1)
    rng = np.random.default_rng([0, batch_size])
    split = data.Split.from_arrays(
        rng.integers(0, 256, (batch_size, *step_speed.IMAGE_SHAPE), dtype=np.uint8),
        rng.integers(0, step_speed.NUM_CLASSES, (batch_size,)))
    dataset = data.Dataset(split, split, step_speed.NUM_CLASSES)
    runs = [training.prepare(c, dataset, teacher_variables=teacher_variables) for c in configs]
    batch = runs[0].batch(0)
    # Host copies: a step donates the states it is given, and each timing starts afresh.
    initial = [jax.device_get(r.state) for r in runs]

    shared = training.shared_train_step(runs)
    states = tuple(r.place(s) for r, s in zip(runs, initial))
    compile_shared = shared.compile(states, batch)
    shared_timed = _Timed(shared, states, batch, warmup)
    own_timed, compile_sequential = [], 0.0
    for r, s in zip(runs, initial):
        own, state = r.train_step(), r.place(s)
        compile_sequential += own.compile(state, batch)
        own_timed.append(_Timed(own, state, batch, warmup))

    shared_rounds, sequential_rounds = [], []
    for _ in range(rounds):
        shared_rounds.append(shared_timed.block(steps))
        sequential_rounds.append(sum(t.block(steps) for t in own_timed))
    speedups = [q / s for q, s in zip(sequential_rounds, shared_rounds)]
    shared_seconds = float(np.median(shared_rounds))
    sequential_seconds = float(np.median(sequential_rounds))
    return {"sweep": sweep, "runs": count, "batch_size": batch_size,
            "rows": [",".join(f"{t}={e['weight']}" for t, e in c.distill.items()) or "student"
                     for c in configs],
            "shared_seconds": shared_seconds, "sequential_seconds": sequential_seconds,
            "shared_images_per_sec_per_run": count * batch_size / shared_seconds,
            "sequential_images_per_sec_per_run": count * batch_size / sequential_seconds,
            "speedup": float(np.median(speedups)),
            "speedup_range": [min(speedups), max(speedups)],
            "compile_seconds": {"shared": compile_shared, "sequential": compile_sequential},
            "devices": runs[0].mesh.size}


def markdown(results: dict) -> str:
    lines = [f"# Shared step vs runs one after another ({results['date']}, "
             f"{results['machine']}, {results['devices']} devices)", "",
             f"Made by `{results['command']}`.", "",
             "| sweep | R | batch | shared: s/step | sequential: s/step | "
             "images/s per run, shared | sequential | speed-up (range over rounds) | steal |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m in results["measurements"]:
        lines.append(f"| {m['sweep']} | {m['runs']} | {m['batch_size']} | "
                     f"{m['shared_seconds']:.3f} | "
                     f"{m['sequential_seconds']:.3f} | "
                     f"{m['shared_images_per_sec_per_run']:.1f} | "
                     f"{m['sequential_images_per_sec_per_run']:.1f} | {m['speedup']:.2f}x "
                     f"({m['speedup_range'][0]:.2f}-{m['speedup_range'][1]:.2f}) | "
                     f"{timing_worker.percent(m['steal'])} |")
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    for sweep in _SWEEPS.value:
        if sweep not in SWEEPS:
            sys.exit(f"error: unknown sweep {sweep!r}; choose from {', '.join(SWEEPS)}.")
    measurements, load_before = [], os.getloadavg()
    for batch_size in (int(b) for b in step_speed._BATCH_SIZES.value):
        for sweep in _SWEEPS.value:
            for count in (int(r) for r in _RUNS.value):
                with timing_worker.Steal() as steal:
                    m = measure(sweep, count, batch_size, step_speed._STEPS.value,
                                step_speed._WARMUP.value, _ROUNDS.value,
                                step_speed._NUM_DEVICES.value)
                m["steal"] = steal.share
                measurements.append(m)
                print(f"{sweep} R={count} batch {batch_size}: shared "
                      f"{m['shared_seconds']:.3f} s, sequential {m['sequential_seconds']:.3f} s, "
                      f"speed-up {m['speedup']:.2f}x", flush=True)
    backend = jax.default_backend()
    out = step_speed._OUT.value or os.path.join(timing_worker.ROOT, "benchmarks", "results",
                                     f"sweep_speed_{os.uname().machine}_{backend}.json")
    results = {"command": timing_worker.command_line(), "date": timing_worker.utc_now(),
               "machine": f"{os.uname().machine} {backend}",
               "devices": measurements[0]["devices"],
               "load_average": timing_worker.load_average(load_before),
               "measurements": measurements}
    timing_worker.write_json(out, results)
    with open(os.path.splitext(out)[0] + ".md", "w") as f:
        f.write(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    flags.FLAGS.set_default("batch_sizes", ["128"])  # Table 1a's batch
    flags.FLAGS.set_default("steps", 3)
    flags.FLAGS.set_default("warmup", 1)
    app.run(main)
