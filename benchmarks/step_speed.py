"""Train-step speed of the library's own step (`vid_jax.training.prepare(...).train_step()`).

For each batch size it times three steps on random uint8 CIFAR-shaped images (32x32x3, 10
classes), with the models, optimizer and augmentation of the CIFAR-10 configs of Table 1a:

  teacher  WRN-40-2 trained alone (configs/cifar10_wrn40_2.py)
  student  WRN-16-1 trained alone (configs/cifar10_wrn16_1.py:student)
  vid_i    WRN-16-1 with VID-I on group1-3 of a frozen WRN-40-2 (configs/cifar10_wrn16_1.py:vid_i);
           the teacher's variables are randomly initialised, which costs the same as trained ones

and reports the compile time (`.lower(...).compile()`) and the steady-state speed: the median
and mean of the timed steps (each blocked on until ready), images/s = batch / step time.
Data loading is not timed: every step gets the same batch, already on the devices.

  .venv/bin/python benchmarks/step_speed.py --out=benchmarks/results/step_speed_$(uname -m)_cpu.json
  .venv/bin/python benchmarks/step_speed.py --batch_sizes=128 --steps=20 --measure=vid_i

With --serve it is instead the vid-jax worker of compare_torch.py (see timing_worker.py).
"""
import importlib.util
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow is only TFDS's reader here

import timing_worker  # noqa: E402  (benchmarks/, beside this script; standard library only)

from vid_jax import host  # noqa: E402  (imports no JAX)

host.use_all_cpu_cores()  # as launch.py does: one XLA CPU device per core

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from vid_jax import augment, data, training  # noqa: E402
from vid_jax.models import build_model, sown_layers  # noqa: E402

ROOT = timing_worker.ROOT
IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = 10
# teacher_forward: the frozen teacher's eval-mode forward alone, as inside the vid_i step (for
# the breakdown vid_i = teacher forward + student step + distillation's own cost).
KINDS = ("teacher", "student", "vid_i", "teacher_forward")

_OUT = flags.DEFINE_string(
    "out", None, "Where the JSON results go (default: benchmarks/results/"
    "step_speed_<machine>_<backend>.json). Its directory is created if needed.")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["64", "128"], "Global batch sizes to time.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per (step, batch size).")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compiling, before timing.")
_NUM_DEVICES = flags.DEFINE_integer("num_devices", None, "Devices in the mesh (default: all).")
_MEASURE = flags.DEFINE_list("measure", list(KINDS), f"Which steps to time, of {KINDS}.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random images and initial variables.")
_SERVE = flags.DEFINE_bool("serve", False, "Run as compare_torch.py's timing worker: "
                           "commands on stdin, replies on stdout (see timing_worker.py).")


# ---------------------------------------------------------------------------------------------
# Configs: the repository's own, so the step is the one a real run compiles.

def _load_config(filename: str, *args):
    if ROOT not in sys.path:  # as launch.py runs: configs may import `configs.<module>`
        sys.path.insert(0, ROOT)
    path = os.path.join(ROOT, "configs", filename)
    spec = importlib.util.spec_from_file_location(f"_benchmark_{filename[:-3]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(*args)


def make_config(kind: str, batch_size: int, num_devices: int | None):
    if kind == "teacher":
        config = _load_config("cifar10_wrn40_2.py")
    else:
        config = _load_config("cifar10_wrn16_1.py", "student" if kind == "student" else "vid_i")
    config.batch_size = batch_size
    config.num_devices = num_devices
    config.progress_bar = False
    return config


def model_name(model_config) -> str:
    return f"WRN-{model_config.depth}-{model_config.width}"


# ---------------------------------------------------------------------------------------------
# Set-up, as training.train_and_evaluate does it (from a checkpoint-free start).

_TEACHERS = {}  # (model, seed) -> (module, variables): calibrated once, used at every batch size


def init_teacher(config, seed: int, calibration_passes: int = 30):
    """The frozen teacher with random variables, in the shape `training.load_teacher` returns.

    Its batch-norm running statistics are calibrated on random images (train-mode passes), as
    training would leave them: with the initial ones (mean 0, variance 1) a random WRN-40-2's
    group3 activations have a std of ~40 in eval mode, and VID-I's loss overflows to NaN within
    a dozen steps at lr 0.1. The values do not change the step's cost, only its numbers.
    """
    if not (config.get("teacher") and config.teacher.get("model")):
        return None, None
    key = (config.teacher.model.to_json(), seed)
    if key in _TEACHERS:
        return _TEACHERS[key]
    teacher = build_model(config.teacher.model, NUM_CLASSES)
    variables = teacher.init(jax.random.key(seed), jnp.zeros((1, *IMAGE_SHAPE)), train=False)
    variables = {k: variables[k] for k in ("params", "batch_stats") if k in variables}
    images = np.random.default_rng(seed).integers(0, 256, (16, *IMAGE_SHAPE), dtype=np.uint8)
    x = augment.normalize(jnp.asarray(images), tuple(config.data.mean), tuple(config.data.std))

    @jax.jit
    def calibrate(variables):
        def one(_, batch_stats):
            _, new = teacher.apply({**variables, "batch_stats": batch_stats}, x, train=True,
                                   mutable=["batch_stats"])
            return new["batch_stats"]
        return {**variables, "batch_stats": jax.lax.fori_loop(
            0, calibration_passes, one, variables["batch_stats"])}

    _TEACHERS[key] = teacher, jax.block_until_ready(calibrate(variables))
    return _TEACHERS[key]


# ---------------------------------------------------------------------------------------------
# Timing.

class PreparedStep:
    """A compiled step with its inputs on the devices. `run(n)` runs it n more times (feeding
    the state back for train steps), waiting for each result, and returns their seconds."""

    def __init__(self, fn, args: tuple, carry: bool, info: dict):
        self.fn, self.args, self.carry, self.info = fn, args, carry, info
        self.out = None

    def run(self, steps: int) -> list[float]:
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            self.out = jax.block_until_ready(self.fn(*self.args))
            if self.carry:
                self.args = (self.out[0], *self.args[1:])
            times.append(time.perf_counter() - t0)
        return times

    def final_loss(self) -> float | None:
        """The last train step's loss (None for the teacher forward or before any step)."""
        return float(self.out[1]["loss"]) if self.carry and self.out is not None else None


def _prepare_teacher_forward(batch_size: int, num_devices: int | None,
                             seed: int) -> PreparedStep:
    """The vid_i step's teacher part alone: normalise, eval-mode forward, sown layers."""
    config = make_config("vid_i", batch_size, num_devices)
    teacher, variables = init_teacher(config, seed + 1)
    mesh = training.make_mesh(num_devices, (batch_size,))
    mean, std = tuple(config.data.mean), tuple(config.data.std)

    def forward(variables, images):
        x = augment.normalize(images, mean, std)
        _, sown = teacher.apply(variables, x, train=False, mutable=["intermediates"])
        return sown_layers(sown["intermediates"])

    images = np.random.default_rng([seed, batch_size]).integers(
        0, 256, (batch_size, *IMAGE_SHAPE), dtype=np.uint8)
    args = (jax.device_put(variables, NamedSharding(mesh, P())),
            jax.device_put(images, NamedSharding(mesh, P(training.AXIS))))
    t0 = time.perf_counter()
    fn = jax.jit(jax.shard_map(forward, mesh=mesh, in_specs=(P(), P(training.AXIS)),
                               out_specs=P(training.AXIS))).lower(*args).compile()
    info = {"step": "teacher_forward", "model": model_name(config.teacher.model),
            "batch_size": batch_size, "distill": {},
            "compile_seconds": round(time.perf_counter() - t0, 3), "devices": mesh.size}
    return PreparedStep(fn, args, carry=False, info=info)


def prepare(kind: str, batch_size: int, num_devices: int | None, seed: int) -> PreparedStep:
    """Builds and compiles one of KINDS at `batch_size`, as train_and_evaluate would."""
    if kind not in KINDS:
        raise ValueError(f"unknown step {kind!r}; choose from {', '.join(KINDS)}.")
    if kind == "teacher_forward":
        return _prepare_teacher_forward(batch_size, num_devices, seed)
    config = make_config(kind, batch_size, num_devices)
    teacher, teacher_variables = init_teacher(config, seed + 1)
    rng = np.random.default_rng([seed, batch_size])
    images = rng.integers(0, 256, (batch_size, *IMAGE_SHAPE), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, (batch_size,)).astype(np.int32)
    split = data.Split.from_arrays(images, labels)
    run = training.prepare(config, data.Dataset(split, split, NUM_CLASSES),
                           teacher_variables=teacher_variables)
    state, batch, step = run.place(run.state), run.batch(0), run.train_step()
    jax.block_until_ready((state, batch))
    compile_seconds = step.compile(state, batch)
    model = model_name(config.model)
    if teacher is not None:
        model += f" <- {model_name(config.teacher.model)}"
    info = {"step": kind, "model": model, "batch_size": batch_size,
            "distill": {t.name: t.weight for t in run.terms},
            "compile_seconds": round(compile_seconds, 3), "devices": run.mesh.size}
    return PreparedStep(step, (state, batch), carry=True, info=info)


def _cpu_seconds() -> float:
    """This process's CPU time, all threads, user + system."""
    t = os.times()
    return t.user + t.system


def measure(kind: str, batch_size: int, steps: int, warmup: int, num_devices: int | None,
            seed: int) -> dict:
    """Compiles, runs `warmup` untimed steps and times `steps` more. `cores_busy` is CPU
    seconds / wall seconds over the timed steps (up to the core count; a thread spinning at
    an all-reduce counts as busy)."""
    prepared = prepare(kind, batch_size, num_devices, seed)
    prepared.run(warmup)
    cpu0, wall0 = _cpu_seconds(), time.perf_counter()
    with timing_worker.Steal() as steal:
        times = prepared.run(steps)
    cores_busy = (_cpu_seconds() - cpu0) / (time.perf_counter() - wall0)
    loss = prepared.final_loss()
    timing_worker.check_loss(loss, f"{kind} at batch {batch_size}")
    result = {**prepared.info, **timing_worker.step_summary(times, batch_size),
              "steps": steps, "warmup": warmup, "cores_busy": round(cores_busy, 2),
              # The share of CPU time the hypervisor took from this VM meanwhile (Linux).
              "steal_share": steal.share}
    if loss is not None:
        result["final_loss"] = round(loss, 5)
    return result


def markdown_table(results: list[dict]) -> str:
    lines = ["| step | model | batch | compile (s) | median step (s) | images/s "
             "| images/s (mean) | cores busy | steal |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['step']} | {r['model']} | {r['batch_size']} | "
                     f"{r['compile_seconds']:.1f} | {r['median_step_seconds']:.3f} | "
                     f"{r['images_per_sec']:.1f} | {r['images_per_sec_mean']:.1f} | "
                     f"{r['cores_busy']:.2f} | {timing_worker.percent(r.get('steal_share'))} |")
    return "\n".join(lines)


def main(argv):
    del argv
    if _SERVE.value:
        timing_worker.serve(
            lambda kind, batch_size: prepare(kind, batch_size, _NUM_DEVICES.value, _SEED.value),
            about={"jax_version": jax.__version__, "backend": jax.default_backend(),
                   "devices": training.make_mesh(_NUM_DEVICES.value).size,
                   "xla_flags": os.environ.get("XLA_FLAGS", "")})
        return
    unknown = [k for k in _MEASURE.value if k not in KINDS]
    if unknown:
        raise app.UsageError(f"--measure: unknown {unknown}; choose from {', '.join(KINDS)}.")
    if _STEPS.value < 1 or _WARMUP.value < 0:
        raise app.UsageError("--steps must be at least 1 and --warmup at least 0.")
    batch_sizes = [int(b) for b in _BATCH_SIZES.value]
    mesh_size = training.make_mesh(_NUM_DEVICES.value).size
    bad = [b for b in batch_sizes if b <= 0 or b % mesh_size]
    if bad:
        raise app.UsageError(f"--batch_sizes {bad}: each must be a positive multiple of the "
                             f"{mesh_size} devices.")
    out = _OUT.value or os.path.join(
        ROOT, "benchmarks", "results",
        f"step_speed_{platform.machine()}_{jax.default_backend()}.json")

    started, load_before = time.perf_counter(), os.getloadavg()
    results = []
    for batch_size in batch_sizes:
        for kind in _MEASURE.value:
            r = measure(kind, batch_size, _STEPS.value, _WARMUP.value, _NUM_DEVICES.value,
                        _SEED.value)
            results.append(r)
            print(f"{kind:8s} {r['model']:22s} batch {batch_size:4d}: compile "
                  f"{r['compile_seconds']:6.1f} s, median step {r['median_step_seconds']:.3f} s, "
                  f"{r['images_per_sec']:8.1f} images/s", flush=True)

    payload = timing_worker.run_record(
        started, load_before, backend=jax.default_backend(), devices=mesh_size,
        devices_available=jax.device_count(), device_kind=jax.devices()[0].device_kind,
        jax_version=jax.__version__, xla_flags=os.environ.get("XLA_FLAGS", ""))
    payload["results"] = results
    timing_worker.write_json(out, payload)
    print()
    print(f"{payload['backend']} x{mesh_size} ({payload['device_kind']}), jax "
          f"{payload['jax_version']}, {payload['cpu_count']} CPUs, {payload['date']}")
    print(markdown_table(results))
    print(f"\nWrote {out} ({payload['wall_seconds']:.0f} s).")


if __name__ == "__main__":
    app.run(main)
