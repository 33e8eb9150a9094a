"""Where one of step_speed.py's steps spends its time on the CPU, from a profiler trace.

Compiles the step as step_speed.py does, runs it, then records `--steps` more steps with
`jax.profiler.trace` and sorts the XLA CPU runtime's events on each worker thread into:

  conv forward / input gradient   fused (YNNPACK) convolutions whose window is the kernel
  conv weight gradient            fused convolutions whose window is the activation map (XLA
                                  writes a weight gradient as a convolution over the whole map)
  conv launch (unfused)           the event of an unfused convolution, which only hands its
                                  work to the thread pool; that work has no events
  transpose                       transpose_copy fusions (layouts for the weight gradients)
  collectives                     all-reduces and the rendezvous that waits for every device
  other                           every other op (batch norm, ReLU, losses, optimizer...)
  untraced                        the rest of the step's wall time on that thread: idle, or
                                  pool work without events (the unfused convolutions)

Fused convolutions are matched to the compiled HLO by the fusion that calls them. Figures are
ms per step per thread, averaged over the recorded steps; the fused convolutions are also
listed by output shape with their arithmetic rate (GFLOP/s on one thread).

  .venv/bin/python benchmarks/profile_step.py --step=student --batch_size=128
  # -> benchmarks/results/profile_<step>_<batch>_<machine>_cpu.json
"""
import collections
import glob
import gzip
import json
import math
import os
import platform
import re
import sys
import tempfile

# isort: split
import step_speed  # benchmarks/, beside this script; splits the host into one device per core
import timing_worker

# isort: split
import jax  # after step_speed, so that the device count it set applies
from absl import app, flags

_STEP = flags.DEFINE_enum("step", "student", list(step_speed.KINDS), "Which step to profile.")
_BATCH = flags.DEFINE_integer("batch_size", 128, "Global batch size.")
_RECORDED = flags.DEFINE_integer("recorded_steps", 3, "Steps recorded in the trace.")
_PROFILE_OUT = flags.DEFINE_string("profile_out", None, "Where the JSON goes (default: "
                                   "benchmarks/results/profile_<step>_<batch>_<machine>_cpu.json).")

_CONV = re.compile(r"= f32\[([\d,]*)\]\S* convolution\((%?[\w.\-]+), (%?[\w.\-]+)\)"
                   r".*?window=\{size=([\dx]+)")
_VALUE = re.compile(r"(%?[\w.\-]+) = f32\[([\d,]*)\]")
_CALL = re.compile(r"%([\w.\-]+) = [^\n]*?calls=%([\w.\-]+)")
_COLLECTIVE = ("all-reduce", "psum", "Rendezvous", "Wait: pending", "all-gather", "collective")


def convolutions(hlo: str) -> dict[str, dict]:
    """Name -> shapes, window, pass and multiply-adds of each convolution in the compiled HLO,
    under its instruction's name and, for a fused one, its computation's name too (the trace
    names a fusion's event after the fusion, which calls that computation)."""
    convs = {}
    for block in re.split(r"\n(?=\S)", hlo):
        block_name = re.match(r"%?([\w.\-]+)", block)
        shapes = {n.lstrip("%"): tuple(int(d) for d in dims.split(",") if d)
                  for n, dims in _VALUE.findall(block)}
        for line in block.splitlines():
            match = _CONV.search(line)
            if not match:
                continue
            out = tuple(int(d) for d in match.group(1).split(",") if d)
            lhs, rhs = shapes[match.group(2).lstrip("%")], shapes[match.group(3).lstrip("%")]
            window_size = [int(w) for w in match.group(4).split("x")]
            # A weight gradient is a convolution whose window spans the activation map.
            weight_grad = max(window_size) > 3
            # Every output element sums over the window and the input features (lhs's last
            # dimension: the b01f layout of every convolution here).
            info = {"pass": "conv weight gradient" if weight_grad
                    else "conv forward / input gradient",
                    "output": list(out), "input": list(lhs), "kernel": list(rhs),
                    "window": match.group(4),
                    "macs": math.prod(out) * math.prod(window_size) * lhs[-1]}
            convs[re.match(r"\s*(?:ROOT )?%?([\w.\-]+)", line).group(1)] = info
            if block_name and line.lstrip().startswith("ROOT"):
                convs[block_name.group(1)] = info
    return convs


def category(name: str, conv: dict | None) -> str:
    if conv is not None:
        return conv["pass"]
    if name.startswith("transpose"):
        return "transpose"
    if name.startswith(_COLLECTIVE):
        return "collectives"
    return "other"


def main(argv):
    del argv
    prepared = step_speed.prepare(_STEP.value, _BATCH.value, None, 0)
    hlo = prepared.fn.as_text()
    convs = convolutions(hlo)
    calls = dict(_CALL.findall(hlo))
    prepared.run(3)
    steps = _RECORDED.value
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True), timing_worker.Steal() as steal:
            seconds = prepared.run(steps)
        trace_file = glob.glob(os.path.join(tmp, "**", "*perfetto_trace.json.gz"),
                               recursive=True)[0]
        with gzip.open(trace_file) as f:
            trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    thread_names = {e["tid"]: e["args"]["name"] for e in events
                    if e.get("ph") == "M" and e.get("name") == "thread_name"}
    # XLA CPU runs a step's ops on its intra-op pool ("XLAEigen") threads.
    workers = {tid for tid, name in thread_names.items() if "XLAEigen" in name}
    spans = [e for e in events if e.get("ph") == "X" and e.get("tid") in workers]
    if not spans:
        sys.exit("error: the trace has no events on XLA's CPU worker threads; this script reads "
                 "the CPU backend's trace only.")
    wall_ms = 1e3 * sum(seconds) / steps

    per_thread = collections.defaultdict(collections.Counter)
    by_shape = collections.Counter()
    calls_by_shape = collections.Counter()
    busy = collections.Counter()
    for tid in workers:
        mine = sorted(((e["ts"], -e["dur"], e["name"]) for e in spans if e["tid"] == tid))
        busy_end = op_end = -math.inf
        for start, minus_dur, name in mine:
            stop = start - minus_dur
            busy[tid] += max(0.0, stop - max(start, busy_end))  # the union of its events
            busy_end = max(busy_end, stop)
            if name.startswith(("ThunkExecutor", "ThreadpoolListener")) or start < op_end:
                continue  # containers and markers, or an event inside an op already counted
            op_end = stop
            conv = convs.get(calls[name]) if name in calls else None
            if conv is None and name in convs:
                # An unfused convolution: its event covers handing the work to the pool, whose
                # tasks have no events of their own; that time shows as "untraced".
                per_thread[tid]["conv launch (unfused)"] += -minus_dur / 1e3 / steps
                continue
            per_thread[tid][category(name, conv)] += -minus_dur / 1e3 / steps
            if conv is not None:
                key = (conv["pass"], tuple(conv["output"]), conv["window"], conv["macs"])
                by_shape[key] += -minus_dur / 1e3 / steps / len(workers)
                calls_by_shape[key] += 1 / steps / len(workers)

    categories = ("conv forward / input gradient", "conv weight gradient",
                  "conv launch (unfused)", "transpose", "collectives", "other")
    rows = []
    for tid in sorted(workers):
        row = {"thread": thread_names[tid],
               **{c: round(per_thread[tid][c], 1) for c in categories}}
        row["untraced"] = round(wall_ms - busy[tid] / 1e3 / steps, 1)
        rows.append(row)
    conv_rows = [{"pass": p, "output": list(out), "window": w,
                  "ms_per_step_per_thread": round(ms, 2),
                  "calls_per_step_per_thread": round(calls_by_shape[(p, out, w, macs)], 1),
                  "gflop_per_sec_one_thread": round(
                      2 * macs * calls_by_shape[(p, out, w, macs)] / (ms / 1e3) / 1e9, 1)}
                 for (p, out, w, macs), ms in by_shape.most_common()]

    print(f"{_STEP.value} at batch {_BATCH.value}, {jax.device_count()} devices: "
          f"{wall_ms:.1f} ms per step over {steps} recorded steps"
          + ("" if steal.share is None else f", {timing_worker.percent(steal.share)} of the CPU "
             "time stolen by the hypervisor meanwhile") + "\n")
    print("| thread | " + " | ".join(categories) + " | untraced |")
    print("|---|" + "---:|" * (len(categories) + 1))
    for r in rows:
        print(f"| {r['thread'][:18]} | " + " | ".join(f"{r[c]:.1f}" for c in categories)
              + f" | {r['untraced']:.1f} |")
    print("\n| convolution | output | window | ms per step per thread | calls | GFLOP/s |")
    print("|---|---|---|---:|---:|---:|")
    for r in conv_rows:
        print(f"| {r['pass']} | {'x'.join(map(str, r['output']))} | {r['window']} | "
              f"{r['ms_per_step_per_thread']:.1f} | {r['calls_per_step_per_thread']:.0f} | "
              f"{r['gflop_per_sec_one_thread']:.1f} |")

    out = _PROFILE_OUT.value or os.path.join(
        timing_worker.ROOT, "benchmarks", "results",
        f"profile_{_STEP.value}_{_BATCH.value}_{platform.machine()}_{jax.default_backend()}.json")
    timing_worker.write_json(out, {
        "step": _STEP.value, "batch_size": _BATCH.value, "devices": jax.device_count(),
        "jax_version": jax.__version__, "machine": platform.machine(),
        "date": timing_worker.utc_now(), "command": timing_worker.command_line(),
        "step_ms": round(wall_ms, 1), "step_seconds": [round(s, 4) for s in seconds],
        "steal_share": steal.share,
        "threads_ms_per_step": rows, "convolutions": conv_rows})
    print(f"\nWrote {out}")


if __name__ == "__main__":
    app.run(main)
