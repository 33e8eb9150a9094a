"""Speed of VID-I's three heads (forward + gradients) with two ways of computing a 1x1 conv.

The heads are those of the Table 1a VID-I step (WRN-16-1 student <- WRN-40-2 teacher, group1-3:
16->32 channels at 32x32, 32->64 at 16x16, 64->128 at 8x8, three 1x1 layers each). The mean
network mu is built from either

  pointwise  vid_jax.heads.pointwise.PointwiseConv: positions flattened, one matmul (the library)
  conv       flax.linen.Conv with a 1x1 kernel (what the heads used before)

with the same parameters, and the time of one jitted loss-and-gradient call is reported
(median over --steps calls) for each batch size. To show why, it also times one such layer
(16->32 channels at 32x32, loss sum((x @ w - t)^2), value and both gradients) on the 4-D maps
and on the same arrays reshaped to [B*H*W, C], and reports the forward multiply-adds per image
(XLA's cost analysis, flops / 2) of the heads, the WRN-16-1 student and the WRN-40-2 teacher.
Writes JSON and prints markdown tables.

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
import jax.numpy as jnp
from absl import app, flags

from vid_jax.heads import VIDHead
from vid_jax.models import build_model

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
        # alpha's initial value changes no cost, so VIDHead's inverse-softplus start is skipped.
        self.alpha = self.param("alpha", nn.initializers.zeros, (self.teacher_channels,))


VARIANTS = {"pointwise": VIDHead, "conv": ConvVIDHead}


def _median_seconds(fn, args, steps: int) -> float:
    """Median seconds of `steps` calls of `fn(*args)` (after two untimed ones)."""
    for _ in range(2):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _heads_and_inputs(head_class, batch_size: int):
    key = jax.random.key(0)
    heads = [head_class(t) for _, _, t in LAYERS]
    students = [jax.random.normal(key, (batch_size, h, h, s)) for h, s, _ in LAYERS]
    teachers = [jax.random.normal(key, (batch_size, h, h, t)) for h, _, t in LAYERS]
    params = [hd.init(key, s, t) for hd, s, t in zip(heads, students, teachers)]

    def loss(params, students):
        return sum(hd.apply(p, s, t) for hd, p, s, t in zip(heads, params, students, teachers))

    return loss, params, students


def time_heads(head_class, batch_size: int, steps: int) -> float:
    """Median seconds of one jitted loss-and-gradient call of the three heads."""
    loss, params, students = _heads_and_inputs(head_class, batch_size)
    return _median_seconds(jax.jit(jax.value_and_grad(loss, argnums=(0, 1))),
                           (params, students), steps)


def time_one_layer(batch_size: int, steps: int, flat: bool) -> float:
    """Median seconds of value and both gradients of sum((x @ w - t)^2) for the first head's
    first layer, on [B, 32, 32, 16] maps or on the same arrays as [B*32*32, 16]."""
    h, c_in, c_out = LAYERS[0]
    key = jax.random.key(1)
    x = jax.random.normal(key, (batch_size, h, h, c_in))
    t = jax.random.normal(key, (batch_size, h, h, c_out))
    w = jax.random.normal(key, (c_in, c_out))
    if flat:
        x, t = x.reshape(-1, c_in), t.reshape(-1, c_out)
    grad = jax.jit(jax.value_and_grad(lambda w, x: jnp.sum(jnp.square(x @ w - t)),
                                      argnums=(0, 1)))
    return _median_seconds(grad, (w, x), steps)


def forward_multiply_adds_per_image(batch_size: int = 8) -> dict[str, float]:
    """Forward multiply-adds per image (XLA cost analysis flops / 2) of the heads, the student
    and the teacher."""
    def per_image(fn, *args):
        return jax.jit(fn).lower(*args).compile().cost_analysis()["flops"] / 2 / batch_size

    loss, params, students = _heads_and_inputs(VIDHead, batch_size)
    counts = {"vid_i_heads": per_image(loss, params, students)}
    images = jnp.zeros((batch_size, 32, 32, 3))
    for name, depth, width in (("wrn_16_1", 16, 1), ("wrn_40_2", 40, 2)):
        model = build_model({"name": "wrn", "depth": depth, "width": width}, 10)
        variables = model.init(jax.random.key(0), images, train=False)
        counts[name] = per_image(lambda v, x, m=model: m.apply(v, x, train=False),
                                 variables, images)
    return counts


def main(argv):
    del argv
    results = []
    for batch_size in [int(b) for b in _BATCH_SIZES.value]:
        row = {"batch_size": batch_size}
        for name, head_class in VARIANTS.items():
            row[f"{name}_ms"] = round(1e3 * time_heads(head_class, batch_size, _STEPS.value), 2)
        row["speedup"] = round(row["conv_ms"] / row["pointwise_ms"], 2)
        for name, flat in (("one_layer_4d_ms", False), ("one_layer_2d_ms", True)):
            row[name] = round(1e3 * time_one_layer(batch_size, _STEPS.value, flat), 2)
        results.append(row)
        print(row, flush=True)
    multiply_adds = {k: round(v / 1e6, 2) for k, v in forward_multiply_adds_per_image().items()}
    out = _OUT.value or os.path.join(ROOT, "benchmarks", "results",
                                     f"head_speed_{platform.machine()}_{jax.default_backend()}.json")
    payload = {"backend": jax.default_backend(), "devices_used": 1, "jax_version": jax.__version__,
               "cpu_count": os.cpu_count(), "machine": platform.machine(),
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "command": " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
               "layers": LAYERS, "results": results,
               "forward_mega_multiply_adds_per_image": multiply_adds}
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(f"{out}.tmp", "w") as f:  # then renamed: no half-written results file
        json.dump(payload, f, indent=2)
        f.write("\n")
    os.replace(f"{out}.tmp", out)
    print("| batch | PointwiseConv (ms) | nn.Conv 1x1 (ms) | speed-up | one layer 4-D (ms) "
          "| one layer 2-D (ms) |\n|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['batch_size']} | {r['pointwise_ms']:.1f} | {r['conv_ms']:.1f} | "
              f"{r['speedup']:.2f}x | {r['one_layer_4d_ms']:.1f} | {r['one_layer_2d_ms']:.1f} |")
    print(f"Forward multiply-adds per image (millions): {multiply_adds}")
    print(f"Wrote {out}")


if __name__ == "__main__":
    app.run(main)
