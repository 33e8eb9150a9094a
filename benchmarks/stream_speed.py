"""Does the host keep up with the step? The streaming loader (`config.data.load="stream"`)
against the train step it feeds, on a generated folder of JPEGs.

For each setting it writes a folder of JPEGs into a temporary directory (removed at the end),
then measures:

  loader  images/s that the loader delivers alone (`data.read_batches` over the sampler's
          batches, as `Run.batches` reads them), with each of --threads decoding threads
  step    images/s of the train step alone, every step on one batch already on the devices
          (as step_speed.py times it)
  fed     images/s of the train step taking its batches from the loader (`Run.batches` with
          `data.read_threads` = --fed_threads): what a streamed run trains at

Settings (--settings):

  imagenet  ImageNet-like JPEGs (each side 300-500 pixels, quality 90), stored with their
            shorter side at 256 and the centre square (`config_base.imagenet_input`); a
            ResNet-18 step on Inception-style crops of 224, batch 32
  small     256x256 JPEGs stored at 64x64 (`resize="stretch"`); a WRN-16-1 step on padded
            crops of 64, batch 64

The files are read from the page cache (they were just written): the figures are decoding
and resizing, not disk reads. Steps are not blocked on one by one: like the training loop,
the host reads the next batch while the devices run the step, and the wall time of all timed
steps is measured, waiting for the last one.

  .venv/bin/python benchmarks/stream_speed.py    # writes stream_speed_<machine>_<backend>.json
  .venv/bin/python benchmarks/stream_speed.py --settings=small --threads=0,1,2,4
"""
import contextlib
import os
import platform
import shutil
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import timing_worker  # noqa: E402  (benchmarks/, beside this script; standard library only)

from vid_jax import host  # noqa: E402  (imports no JAX)

host.use_all_cpu_cores()  # as launch.py does: one XLA CPU device per core

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from PIL import Image  # noqa: E402

from vid_jax import augment, config_base, data, training  # noqa: E402
from vid_jax.training.sampler import BatchSampler  # noqa: E402

ROOT = timing_worker.ROOT
NUM_CLASSES = 10
# setting -> the generated JPEGs' sides (low, high), how many, and the run that reads them.
SETTINGS = {
    "imagenet": dict(sides=(300, 500), images=1000, model=dict(name="resnet18"),
                     batch_size=32, about="ImageNet-like JPEGs, shorter side 256, ResNet-18 on "
                                          "random-resized crops of 224"),
    "small": dict(sides=(256, 256), images=2000, model=dict(name="wrn", depth=16, width=1),
                  batch_size=64, image_size=64,
                  about="256x256 JPEGs stored at 64x64, WRN-16-1 on padded crops of 64"),
}

_OUT = flags.DEFINE_string(
    "out", None, "Where the JSON results go (default: benchmarks/results/"
    "stream_speed_<machine>_<backend>.json).")
_SETTINGS = flags.DEFINE_list("settings", list(SETTINGS), f"Of {', '.join(SETTINGS)}.")
_THREADS = flags.DEFINE_list("threads", ["0", "1", "2"], "Decoding threads of the loader.")
_FED_THREADS = flags.DEFINE_integer("fed_threads", 2, "Decoding threads of the fed step.")
_LOADER_BATCHES = flags.DEFINE_integer("loader_batches", 8, "Timed batches per loader row.")
_STEPS = flags.DEFINE_integer("steps", 6, "Timed steps of the step and the fed step.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps (or batches) before timing.")
# Every tenth group of NUM_CLASSES images is the test split: fewer than 10 groups leave none.
_IMAGES = flags.DEFINE_integer("images", None, "JPEGs per setting (default: the setting's).",
                               lower_bound=10 * NUM_CLASSES)
_KEEP = flags.DEFINE_string("keep", None, "Write the JPEGs here and keep them (default: a "
                            "temporary directory, removed at the end).")


def write_jpegs(root: str, sides: tuple[int, int], count: int, seed: int = 0) -> dict:
    """`count` JPEGs in root/{train,test}/<class>/, split 9:1, of random sizes within `sides`:
    smooth random colour fields with noise, which compress about as photographs do (ImageNet's
    average JPEG is about 110 kB). Returns their number and mean size."""
    rng = np.random.default_rng(seed)
    sizes = []
    for i in range(count):
        split = "test" if (i // NUM_CLASSES) % 10 == 9 else "train"
        folder = os.path.join(root, split, f"class{i % NUM_CLASSES}")
        os.makedirs(folder, exist_ok=True)
        width, height = (int(v) for v in rng.integers(sides[0], sides[1] + 1, 2))
        coarse = Image.fromarray(rng.integers(0, 256, (height // 24 + 2, width // 24 + 2, 3),
                                              np.uint8))
        field = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), np.float32)
        pixels = np.clip(field + rng.normal(0, 12, field.shape), 0, 255).astype(np.uint8)
        path = os.path.join(folder, f"{i:06d}.jpg")
        Image.fromarray(pixels).save(path, quality=90)
        sizes.append(os.path.getsize(path))
    return {"images": count, "mean_kilobytes": round(float(np.mean(sizes)) / 1000, 1),
            "sides": list(sides)}


def make_config(setting: str, path: str, read_threads: int):
    spec = SETTINGS[setting]
    config = config_base.base_config()
    config.data.update(source="image_folder", path=path, load="stream",
                       read_threads=read_threads)
    if setting == "imagenet":
        config_base.imagenet_input(config)
    else:
        config.data.update(image_size=spec["image_size"], resize="stretch",
                           mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    config.model = dict(spec["model"])
    config.batch_size = spec["batch_size"]
    config.optimizer.update(learning_rate=0.01, schedule="cosine")
    config.num_epochs = 1
    return config


def measure_loader(split, batch_size: int, threads: int, batches: int, warmup: int) -> dict:
    """Images/s of `read_batches` over the sampler's batches of one process."""
    sampler = BatchSampler(len(split), batch_size, seed=0)
    reader = data.read_batches(split, sampler.indices, 0, warmup + batches, threads)
    for _ in range(warmup):
        next(reader)
    cpu0, wall0 = _cpu_seconds(), time.perf_counter()
    with timing_worker.Steal() as steal:
        for _ in reader:
            pass
    wall, cpu = time.perf_counter() - wall0, _cpu_seconds() - cpu0
    # Images per CPU second: what decoding costs, whatever share of the cores the process got.
    return {"threads": threads, "batches": batches,
            "images_per_sec": round(batches * batch_size / wall, 1),
            "images_per_cpu_second": round(batches * batch_size / cpu, 1),
            "cores_busy": round(cpu / wall, 2), "steal_share": steal.share}


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def _timed_steps(step, state, batches, steps: int, warmup: int, batch_size: int) -> dict:
    """Runs `warmup` + `steps` steps on `batches` (an iterator), timing the last `steps`."""
    for _ in range(warmup):
        state, metrics = step(state, next(batches))
    jax.block_until_ready(state)
    cpu0, wall0 = _cpu_seconds(), time.perf_counter()
    with timing_worker.Steal() as steal:
        for _ in range(steps):
            state, metrics = step(state, next(batches))
        jax.block_until_ready((state, metrics))
    wall = time.perf_counter() - wall0
    timing_worker.check_loss(float(metrics["loss"]), "the step")
    return {"steps": steps, "images_per_sec": round(steps * batch_size / wall, 2),
            "step_seconds": round(wall / steps, 4),
            "cores_busy": round((_cpu_seconds() - cpu0) / wall, 2), "steal_share": steal.share}


def measure_setting(setting: str, root: str) -> dict:
    spec = SETTINGS[setting]
    t0 = time.perf_counter()
    files = write_jpegs(root, spec["sides"], _IMAGES.value or spec["images"])
    files["write_seconds"] = round(time.perf_counter() - t0, 1)
    print(f"{setting}: {files['images']} JPEGs, {files['mean_kilobytes']} kB on average, "
          f"written in {files['write_seconds']} s", flush=True)
    config = make_config(setting, root, _FED_THREADS.value)
    run = training.prepare(config)
    batch_size = config.batch_size

    loader = []
    for threads in (int(t) for t in _THREADS.value):
        row = measure_loader(run.dataset.train, batch_size, threads, _LOADER_BATCHES.value,
                             _WARMUP.value)
        loader.append(row)
        print(f"  loader, {threads} threads: {row['images_per_sec']:8.1f} images/s "
              f"({row['cores_busy']:.2f} cores busy, {row['images_per_cpu_second']:.0f} images "
              "per CPU second)", flush=True)

    step = run.train_step()
    state = run.place(run.state)
    batch = run.batch(0)
    compile_seconds = step.compile(state, batch)

    def same_batch():
        while True:
            yield batch

    alone = _timed_steps(step, state, same_batch(), _STEPS.value, _WARMUP.value, batch_size)
    print(f"  step alone: {alone['images_per_sec']:8.1f} images/s "
          f"({alone['step_seconds']:.3f} s a step; compiled in {compile_seconds:.0f} s)",
          flush=True)
    state = run.place(run.state)  # the timed steps donated the first one
    with contextlib.closing(run.batches(0, _WARMUP.value + _STEPS.value)) as batches:
        fed = _timed_steps(step, state, batches, _STEPS.value, _WARMUP.value, batch_size)
    fed["threads"] = _FED_THREADS.value
    print(f"  step fed by the loader ({_FED_THREADS.value} threads): "
          f"{fed['images_per_sec']:8.1f} images/s", flush=True)
    return {"setting": setting, "about": spec["about"], "files": files,
            "stored_image_shape": list(run.dataset.train.image_shape),
            "input_shape": list(augment.input_shape(config.augment,
                                                    run.dataset.train.image_shape)),
            "model": config.model.to_dict(), "batch_size": batch_size,
            "devices": run.mesh.size, "compile_seconds": round(compile_seconds, 1),
            "loader": loader, "step": alone, "fed": fed,
            "host_keeps_up": max(r["images_per_sec"] for r in loader) >= alone["images_per_sec"]}


def markdown_table(results: list[dict]) -> str:
    threads = [r["threads"] for r in results[0]["loader"]]
    lines = ["| setting | batch | " + " | ".join(f"loader, {t} threads" for t in threads)
             + " | step alone | step fed by the loader |",
             "|---|---:|" + "---:|" * (len(threads) + 2)]
    for r in results:  # loader: images/s (images per CPU second)
        cells = [f"{row['images_per_sec']:.0f} ({row['images_per_cpu_second']:.0f})"
                 for row in r["loader"]]
        lines.append(f"| {r['setting']} ({r['about']}) | {r['batch_size']} | "
                     + " | ".join(cells) + f" | {r['step']['images_per_sec']:.1f} | "
                     f"{r['fed']['images_per_sec']:.1f} ({r['fed']['threads']} threads) |")
    return "\n".join(lines)


def main(argv):
    del argv
    unknown = [s for s in _SETTINGS.value if s not in SETTINGS]
    if unknown:
        raise app.UsageError(f"--settings: unknown {unknown}; choose from {', '.join(SETTINGS)}.")
    out = _OUT.value or os.path.join(
        ROOT, "benchmarks", "results",
        f"stream_speed_{platform.machine()}_{jax.default_backend()}.json")
    started, load_before = time.perf_counter(), os.getloadavg()
    results = []
    for setting in _SETTINGS.value:
        root = (os.path.join(_KEEP.value, setting) if _KEEP.value
                else tempfile.mkdtemp(prefix=f"vid_jax_stream_{setting}_"))
        try:
            results.append(measure_setting(setting, root))
        finally:
            if not _KEEP.value:
                shutil.rmtree(root, ignore_errors=True)
    payload = timing_worker.run_record(
        started, load_before, backend=jax.default_backend(),
        device_kind=jax.devices()[0].device_kind, jax_version=jax.__version__)
    payload["results"] = results
    timing_worker.write_json(out, payload)
    print()
    print(f"{payload['backend']} ({payload['device_kind']}), {payload['cpu_count']} CPUs, "
          f"load {payload['load_average_1_5_15_min']}, {payload['date']}")
    print(markdown_table(results))
    print(f"\nWrote {out} ({payload['wall_seconds']:.0f} s).")


if __name__ == "__main__":
    app.run(main)
