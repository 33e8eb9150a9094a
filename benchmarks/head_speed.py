"""Speed of VID-I's three heads (forward + gradients) with two ways of computing a 1x1 conv.

The heads are those of the Table 1a VID-I step (WRN-16-1 student <- WRN-40-2 teacher, group1-3:
16->32 channels at 32x32, 32->64 at 16x16, 64->128 at 8x8, three 1x1 layers each). The mean
network mu is built from either

  pointwise  vid_jax.heads.pointwise.PointwiseConv: positions flattened, one matmul (the library)
  conv       flax.linen.Conv with a 1x1 kernel (what the heads used before)

with the same parameters, and the time of one jitted loss-and-gradient call is reported
(median over --steps calls) for each batch size. Writes JSON and prints a markdown table.

  .venv/bin/python benchmarks/head_speed.py --out=benchmarks/results/head_speed_$(uname -m)_cpu.json
"""
import datetime
import json
import os
import platform
import statistics
import sys
import time

import flax.linen as nn
import jax
from absl import app, flags

from vid_jax.heads import VIDHead

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (spatial size, student channels, teacher channels) of WRN-16-1 / WRN-40-2 groups 1-3.
LAYERS = ((32, 16, 32), (16, 32, 64), (8, 64, 128))

_OUT = flags.DEFINE_string("out", None, "JSON output (default: benchmarks/results/"
                           "head_speed_<machine>_<backend>.json).")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["64", "128"], "Batch sizes to time.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed calls per (variant, batch size).")


class ConvVIDHead(VIDHead):
    """VIDHead whose mean network is made of `nn.Conv` 1x1 layers (the former layout)."""

    def setup(self) -> None:
        widths = [self.hidden_channels or self.teacher_channels] * (self.num_layers - 1)
        self.convs = [nn.Conv(w, (1, 1)) for w in [*widths, self.teacher_channels]]
        self.alpha = self.param("alpha", nn.initializers.zeros, (self.teacher_channels,))


VARIANTS = {"pointwise": VIDHead, "conv": ConvVIDHead}


def time_heads(head_class, batch_size: int, steps: int) -> float:
    """Median seconds of one jitted loss-and-gradient call of the three heads."""
    key = jax.random.key(0)
    heads = [head_class(t) for _, _, t in LAYERS]
    students = [jax.random.normal(key, (batch_size, h, h, s)) for h, s, _ in LAYERS]
    teachers = [jax.random.normal(key, (batch_size, h, h, t)) for h, _, t in LAYERS]
    params = [hd.init(key, s, t) for hd, s, t in zip(heads, students, teachers)]

    def loss(params, students):
        return sum(hd.apply(p, s, t) for hd, p, s, t in zip(heads, params, students, teachers))

    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    for _ in range(2):
        jax.block_until_ready(grad(params, students))
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        jax.block_until_ready(grad(params, students))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv):
    del argv
    results = []
    for batch_size in [int(b) for b in _BATCH_SIZES.value]:
        row = {"batch_size": batch_size}
        for name, head_class in VARIANTS.items():
            row[f"{name}_ms"] = round(1e3 * time_heads(head_class, batch_size, _STEPS.value), 2)
        row["speedup"] = round(row["conv_ms"] / row["pointwise_ms"], 2)
        results.append(row)
        print(row, flush=True)
    out = _OUT.value or os.path.join(ROOT, "benchmarks", "results",
                                     f"head_speed_{platform.machine()}_{jax.default_backend()}.json")
    payload = {"backend": jax.default_backend(), "devices_used": 1, "jax_version": jax.__version__,
               "cpu_count": os.cpu_count(), "machine": platform.machine(),
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "command": " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
               "layers": LAYERS, "results": results}
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(f"{out}.tmp", "w") as f:  # then renamed: no half-written results file
        json.dump(payload, f, indent=2)
        f.write("\n")
    os.replace(f"{out}.tmp", out)
    print("| batch | PointwiseConv (ms) | nn.Conv 1x1 (ms) | speed-up |\n|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['batch_size']} | {r['pointwise_ms']:.1f} | {r['conv_ms']:.1f} | "
              f"{r['speedup']:.2f}x |")
    print(f"Wrote {out}")


if __name__ == "__main__":
    app.run(main)
