"""Is the host the bottleneck? Images/s of whole training epochs against the step benchmark.

Trains a Table 1a config (default: the WRN-16-1 student alone, the fastest step and so the one
most exposed to a slow input pipeline) on all 50,000 CIFAR-10 training images of
`../shared/data/cifar10-jpeg` with `train.train_and_evaluate`, as `launch.py` does (sampling,
host-to-device copies, in-step augmentation, metrics), and reads each epoch's images/s from its
metrics.jsonl (training only: the test-set evaluation is timed apart). Then, in the same
process, it times the same step with `step_speed.measure` (one batch already on the devices,
no input pipeline) before and after the epochs and reports epoch / the faster step. Writes
JSON and prints a markdown table.

  .venv/bin/python benchmarks/epoch_speed.py                     # student, 2 epochs: ~7 min here
  .venv/bin/python benchmarks/epoch_speed.py --row=vid_i --teacher=teachers/cifar10_wrn40_2
"""
import datetime
import json
import os
import platform
import sys
import tempfile
import time

from vid_jax import host

host.use_all_cpu_cores()  # as launch.py does: one XLA CPU device per core

import jax  # noqa: E402
import step_speed  # noqa: E402  (the step benchmark beside this file)
from absl import app, flags  # noqa: E402

from vid_jax import train  # noqa: E402

ROOT = step_speed.ROOT

_RESULT = flags.DEFINE_string("result", None, "JSON output (default: benchmarks/results/"
                              "epoch_speed_<machine>_<backend>.json).")
_ROW = flags.DEFINE_enum("row", "student", ["student", "vid_i"], "Which step to train.")
_EPOCHS = flags.DEFINE_integer("epochs", 2, "Epochs of the whole training set.")
_BATCH = flags.DEFINE_integer("batch", 128, "Global batch size.")
_DATA = flags.DEFINE_string("data", "../shared/data/cifar10-jpeg",
                            "CIFAR-10 image folder (relative paths: from the project root).")
_STEPS = flags.DEFINE_integer("step_benchmark_steps", 60, "Timed steps of the step benchmark.")
_TEACHER = flags.DEFINE_string("teacher", "teachers/cifar10_wrn40_2",
                               "Teacher workdir for --row=vid_i.")


def epoch_images_per_sec(row: str, batch_size: int, epochs: int, data_path: str,
                         teacher: str) -> tuple[list[float], float]:
    """Trains `epochs` epochs; returns each epoch's images/s and the seconds before the first."""
    config = step_speed.make_config(row, batch_size, None)
    config.data.source = "image_folder"
    config.data.path = os.path.join(ROOT, data_path)
    config.num_epochs = epochs
    config.eval_every_epochs = epochs
    config.checkpoint_every_epochs = epochs
    config.log_epochs = False
    if row != "student":
        config.teacher.workdir = os.path.join(ROOT, teacher)
    with tempfile.TemporaryDirectory() as workdir:
        t0 = time.perf_counter()
        train.train_and_evaluate(config, workdir)
        total = time.perf_counter() - t0
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            records = [json.loads(line) for line in f]
    return [r["images_per_sec"] for r in records], total


def main(argv):
    del argv
    started = time.perf_counter()
    # The step is timed before and after the epochs (the machine's speed drifts by +-15%), and
    # each epoch is compared with the faster of the two: the stricter test of the host.
    steps = [step_speed.measure(_ROW.value, _BATCH.value, steps=_STEPS.value, warmup=2,
                                num_devices=None, seed=0)]
    epochs, total = epoch_images_per_sec(_ROW.value, _BATCH.value, _EPOCHS.value, _DATA.value,
                                         _TEACHER.value)
    steps.append(step_speed.measure(_ROW.value, _BATCH.value, steps=_STEPS.value, warmup=2,
                                    num_devices=None, seed=0))
    step = max(steps, key=lambda s: s["images_per_sec"])
    ratios = [round(e / step["images_per_sec"], 3) for e in epochs]
    payload = {
        "backend": jax.default_backend(), "devices": jax.device_count(),
        "jax_version": jax.__version__, "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
        "row": _ROW.value, "batch_size": _BATCH.value, "train_images": 50_000,
        "epoch_images_per_sec": [round(e, 1) for e in epochs],
        "step_images_per_sec": step["images_per_sec"],
        "step_images_per_sec_before_and_after": [s["images_per_sec"] for s in steps],
        "step_timed_steps": _STEPS.value,
        "epoch_over_step": ratios,
        "train_and_evaluate_seconds": round(total, 1),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    out = _RESULT.value or os.path.join(ROOT, "benchmarks", "results", "epoch_speed_"
                                        f"{platform.machine()}_{jax.default_backend()}.json")
    step_speed.write_json_atomically(out, payload)
    print(f"Step images/s before / after the epochs: {steps[0]['images_per_sec']:.1f} / "
          f"{steps[1]['images_per_sec']:.1f}")
    print(f"| epoch | epoch images/s | step images/s ({step['model']}, batch {_BATCH.value}) "
          "| epoch / step |\n|---:|---:|---:|---:|")
    for i, (e, r) in enumerate(zip(epochs, ratios), 1):
        print(f"| {i} | {e:.1f} | {step['images_per_sec']:.1f} | {r:.3f} |")
    print(f"Wrote {out}")


if __name__ == "__main__":
    app.run(main)
