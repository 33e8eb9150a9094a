"""vid-jax's train steps against the same steps in plain PyTorch, or against vid-jax under
another setting (an XLA flag, a device count, an environment variable), on this machine.

Starts two timing workers, `step_speed.py --serve` (vid-jax, this virtualenv) and
`torch_step.py --serve` (PyTorch, its own virtualenv), and keeps them both for the whole run.
With `--env NAME=VALUE` the second worker is instead another `step_speed.py --serve`, the
"setting", with those variables added to this environment, against the "default" in this one.
For each (step, batch size) both build and compile (or run their first step) and warm up; then,
for `--rounds` rounds, each times a block of `--block` steps in turn, alternating which goes
first, while the other waits idle. A ratio is taken per round from the two adjacent blocks, so
a drift in this machine's speed (+-15% and more between minutes here) falls on both sides of it.
Each framework uses all cores by default: vid-jax one XLA CPU device per core (vid_jax.host),
PyTorch one thread per core.

Writes a JSON file and a markdown table: images/s of each side (batch / median step time over
all its timed steps), the median and range of the per-round ratios (vid-jax over PyTorch, or
the setting over the default), the time to the first step, and the breakdown of each side's
VID-I step.

  python3 -m venv .venv-torch && .venv-torch/bin/pip install torch==2.13.0 numpy
  .venv/bin/python benchmarks/compare_torch.py            # -> benchmarks/results/jax_vs_torch_*
  .venv/bin/python benchmarks/compare_torch.py --measure=vid_i --batch_sizes=128 \\
      --env="XLA_FLAGS=--xla_force_host_platform_device_count=1"   # -> results/setting_vs_default_*
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import timing_worker  # benchmarks/, beside this script

ROOT = timing_worker.ROOT
# step_speed.py's and torch_step.py's steps; teacher_forward gives the VID-I step's breakdown.
STEPS = ("teacher", "student", "vid_i", "teacher_forward")
# The two sides, the first over the second in every ratio: their keys in the results and names.
TORCH_SIDES = {"jax": "vid-jax", "torch": "PyTorch"}
SETTING_SIDES = {"setting": "setting", "default": "default"}
STEAL_WARNING = 0.05  # above this share of stolen CPU time, a block's timings are noise


class Worker:
    """One timing worker process, spoken to by timing_worker's line protocol."""

    def __init__(self, name: str, command: list[str], env: dict[str, str] | None = None):
        self.name = name
        print("+", " ".join([*(f"{k}={v!r}" for k, v in (env or {}).items()), *(
            os.path.relpath(c, ROOT) if c.startswith(ROOT) else c for c in command)]),
            flush=True)
        self.process = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True,
                                        env={**os.environ, **(env or {})})

    def ask(self, **command) -> dict:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        for line in self.process.stdout:
            if line.startswith(timing_worker.REPLY):
                reply = json.loads(line[len(timing_worker.REPLY):])
                if "error" in reply:
                    raise RuntimeError(f"{self.name} worker, {command}: {reply['error']}")
                return reply
        raise RuntimeError(f"the {self.name} worker exited (code {self.process.wait()}) "
                           f"while answering {command}; its error is printed above.")

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.process.stdin.close()
                self.process.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()


def parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--env {pair!r}: expected NAME=VALUE.")
        env[name] = value
    return env


def start_workers(args: argparse.Namespace, env: dict[str, str]) -> dict[str, Worker]:
    """The two sides' workers: vid-jax and PyTorch, or vid-jax with `env` and without."""
    jax_command = [sys.executable, os.path.join(ROOT, "benchmarks", "step_speed.py"), "--serve"]
    if env:
        return {"setting": Worker("setting", jax_command, env),
                "default": Worker("default", jax_command)}
    torch_command = [args.torch_python, os.path.join(ROOT, "benchmarks", "torch_step.py"),
                     "--serve"]
    if args.torch_threads:
        torch_command.append(f"--threads={args.torch_threads}")
    return {"jax": Worker("vid-jax", jax_command), "torch": Worker("PyTorch", torch_command)}


def compare(workers: dict[str, Worker], step: str, batch: int, args: argparse.Namespace) -> dict:
    """Both sides' timings of one step, in alternating blocks, with per-round ratios."""
    infos = {side: w.ask(cmd="prepare", step=step, batch_size=batch, warmup=args.warmup)["info"]
             for side, w in workers.items()}
    blocks: dict[str, list[list[float]]] = {side: [] for side in workers}
    stolen: dict[str, list[float | None]] = {side: [] for side in workers}
    first, second = workers
    for round_index in range(args.rounds):
        for side in (first, second) if round_index % 2 == 0 else (second, first):
            time.sleep(args.settle)  # the other side's idle threads stop spinning
            with timing_worker.Steal() as steal:
                reply = workers[side].ask(cmd="run", steps=args.block)
            stolen[side].append(steal.share)
            timing_worker.check_loss(reply["final_loss"],
                                     f"{workers[side].name} {step} at batch {batch}")
            blocks[side].append(reply["seconds"])
    # Per round, images/s of the first side over the second's = the second's median time over
    # the first's.
    ratios = [statistics.median(b) / statistics.median(a)
              for a, b in zip(blocks[first], blocks[second])]
    row = {"step": step, "batch_size": batch, "model": infos[first]["model"]}
    for side, info in infos.items():  # vid-jax compiles; PyTorch's analogue is its first step
        for key in ("compile_seconds", "first_step_seconds"):
            if key in info:
                row[f"{side}_{key}"] = info[key]
    row.update({"ratio": round(statistics.median(ratios), 3),
                "ratio_min": round(min(ratios), 3), "ratio_max": round(max(ratios), 3),
                "round_ratios": [round(r, 3) for r in ratios],
                # Share of CPU time the hypervisor took from this VM during each block (Linux).
                "steal_share": stolen})
    add_steal_summary(row)
    for side, side_blocks in blocks.items():
        seconds = [t for block in side_blocks for t in block]
        median = statistics.median(seconds)
        row.update({f"{side}_median_step_seconds": round(median, 5),
                    f"{side}_median_images_per_sec": round(batch / median, 2),
                    f"{side}_step_seconds": [round(t, 5) for t in seconds]})
    return row


def add_steal_summary(row: dict) -> None:
    """The largest steal share of any block, and the ratio over the quiet rounds only (both
    blocks at most STEAL_WARNING stolen)."""
    steal = row["steal_share"]
    shares = [x for v in steal.values() for x in v if x is not None]
    row["max_steal_share"] = round(max(shares), 3) if shares else None
    quiet = [r for r, *blocks in zip(row["round_ratios"], *steal.values())
             if all((x or 0) <= STEAL_WARNING for x in blocks)]
    row["quiet_rounds"] = len(quiet)
    row["ratio_quiet"] = round(statistics.median(quiet), 3) if quiet else None


def breakdown(rows: list[dict], side: str) -> list[dict]:
    """VID-I step = teacher forward + student step + distillation (heads, losses, their
    backward and update): the last is what is left of the VID-I step time."""
    key = f"{side}_median_step_seconds"
    seconds = {(r["step"], r["batch_size"]): r[key] for r in rows if key in r}
    out = []
    for batch in sorted({b for _, b in seconds}):
        try:
            vid, forward, student = (seconds[(k, batch)]
                                     for k in ("vid_i", "teacher_forward", "student"))
        except KeyError:
            continue
        distill = vid - forward - student
        out.append({"framework": side, "batch_size": batch, "vid_i_step_seconds": vid,
                    "teacher_forward_seconds": forward, "student_step_seconds": student,
                    "distillation_seconds": round(distill, 5),
                    "distillation_share_beyond_forward_and_student": round(
                        distill / (forward + student), 4)})
    return out


def describe(about: dict) -> str:
    """One side's versions and settings, from its worker's "about" reply."""
    if "torch_version" in about:
        return (f"PyTorch {about['torch_version']} with {about['threads']} thread(s), "
                f"channels_last={about['channels_last']}")
    return f"JAX {about['jax_version']} on {about['devices']} XLA CPU device(s)"


def markdown(rows: list[dict], parts: list[dict], meta: dict) -> str:
    sides = meta.get("sides", TORCH_SIDES)  # runs before --env named no sides
    (first, a), (second, b) = sides.items()
    settings = f"{describe(meta[first])}, {describe(meta[second])}"
    if meta.get("env"):
        settings = (f"{b}: {describe(meta[second])}; {a}: {describe(meta[first])}, with "
                    + " ".join(f"{k}={v!r}" for k, v in meta["env"].items()) + " added")

    def start(side: str) -> str:  # vid-jax's compile time, or PyTorch's first step
        return "compile" if rows and f"{side}_compile_seconds" in rows[0] else "first step"

    lines = [f"# {a} vs {b}: train steps on {meta['machine']} ({meta['cpu_count']} cores)",
             "", f"{meta['date']}; per step, {meta['rounds']} rounds of {meta['block']} timed "
             f"steps per side (after {meta['warmup']} warm-up steps), alternating which goes "
             f"first; {settings}.", "",
             "Images/s: batch / median step time over all rounds. Ratio: median (and range) "
             f"over rounds of {a}'s images/s over {b}'s in the same round. Steal: the "
             "largest share of CPU time the hypervisor took from this VM in any block; quiet "
             f"rounds: those whose two blocks had at most {100 * STEAL_WARNING:.0f}% stolen.", "",
             f"| step | model | batch | {a} images/s | {b} images/s | ratio | "
             f"ratio range | ratio, quiet rounds (n) | {a} {start(first)} (s) | "
             f"{b} {start(second)} (s) | steal (max) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "ratio" not in r:
            continue
        starts = [r.get(f"{side}_compile_seconds", r.get(f"{side}_first_step_seconds"))
                  for side in (first, second)]
        lines.append(f"| {r['step']} | {r['model']} | {r['batch_size']} | "
                     f"{r[f'{first}_median_images_per_sec']:.1f} | "
                     f"{r[f'{second}_median_images_per_sec']:.1f} | {r['ratio']:.2f} | "
                     f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f} | "
                     + ("-" if r["ratio_quiet"] is None else f"{r['ratio_quiet']:.2f}")
                     + f" ({r['quiet_rounds']}) | {starts[0]:.1f} | {starts[1]:.1f} | "
                     f"{timing_worker.percent(r['max_steal_share'])} |")
    if parts:
        lines += ["", "Breakdown of the VID-I step (median step seconds; teacher forward timed "
                  "alone):", "", f"| {'framework' if 'torch' in sides else 'side'} | batch | "
                  "VID-I step | teacher forward | "
                  "student step | distillation | distillation / (forward + student) |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
    for p in sorted(parts, key=lambda p: (p["batch_size"], list(sides).index(p["framework"]))):
        lines.append(f"| {sides[p['framework']]} | {p['batch_size']} | "
                     f"{p['vid_i_step_seconds']:.3f} | "
                     f"{p['teacher_forward_seconds']:.3f} | {p['student_step_seconds']:.3f} | "
                     f"{p['distillation_seconds']:.3f} | "
                     f"{100 * p['distillation_share_beyond_forward_and_student']:.1f}% |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch_python", default=os.path.join(ROOT, ".venv-torch", "bin",
                                                               "python"))
    parser.add_argument("--torch_threads", type=int, default=None,
                        help="PyTorch threads (default: torch_step.py's, one per core).")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="Compare vid-jax with these variables added (repeatable) against "
                        "vid-jax without them, instead of against PyTorch.")
    parser.add_argument("--batch_sizes", default="64,128")
    parser.add_argument("--measure", default=",".join(STEPS),
                        help=f"Which steps to time, of {STEPS}.")
    parser.add_argument("--rounds", type=int, default=5, help="Blocks per side.")
    parser.add_argument("--block", type=int, default=4, help="Timed steps per block.")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed steps after compiling.")
    parser.add_argument("--settle", type=float, default=1.0,
                        help="Seconds of pause before each block, so that the worker that just "
                        "ran (OpenMP and XLA's pool threads spin a while when idle) is asleep.")
    parser.add_argument("--out", default=None, help="JSON output (default: benchmarks/results/"
                        "jax_vs_torch_<machine>_cpu.json, or setting_vs_default_... with --env)"
                        "; the markdown table goes beside it.")
    parser.add_argument("--render", metavar="JSON", default=None,
                        help="Only rewrite the markdown table of an earlier run's JSON file.")
    args = parser.parse_args()
    if args.render:
        with open(args.render) as f:
            payload = json.load(f)
        for row in payload["results"]:
            add_steal_summary(row)
        write_results(args.render, payload)
        return
    try:
        env = parse_env(args.env)
    except ValueError as error:
        parser.error(str(error))
    steps = args.measure.split(",")
    if [s for s in steps if s not in STEPS]:
        parser.error(f"--measure must name steps of {STEPS}.")
    if args.rounds < 1 or args.block < 1 or args.warmup < 0:
        parser.error("--rounds and --block must be at least 1, --warmup at least 0.")
    if not env and not os.path.exists(args.torch_python):
        sys.exit(f"error: no PyTorch at {args.torch_python}; install the baseline with "
                 "`python3 -m venv .venv-torch && .venv-torch/bin/pip install torch==2.13.0 "
                 "numpy`, or pass --torch_python.")
    out = args.out or os.path.join(ROOT, "benchmarks", "results", (
        "setting_vs_default" if env else "jax_vs_torch") + f"_{platform.machine()}_cpu.json")
    sides = SETTING_SIDES if env else TORCH_SIDES

    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    started, date = time.perf_counter(), timing_worker.utc_now()
    workers = start_workers(args, env)
    rows = []
    try:
        versions = {side: w.ask(cmd="about")["about"] for side, w in workers.items()}
        for batch in batch_sizes:
            for step in steps:
                row = compare(workers, step, batch, args)
                rows.append(row)
                print(f"{step:15s} batch {batch:4d}: " + ", ".join(
                    f"{name} {row[f'{side}_median_images_per_sec']:7.1f}"
                    for side, name in sides.items()) + " images/s, ratio "
                    f"{row['ratio']:.2f} ({row['ratio_min']:.2f}-{row['ratio_max']:.2f})"
                    + ("" if row["max_steal_share"] is None
                       else f", steal up to {timing_worker.percent(row['max_steal_share'])}"),
                    flush=True)
    except (RuntimeError, FloatingPointError) as error:  # a worker's error, or a NaN loss
        sys.exit(f"error: {error}")
    finally:
        for worker in workers.values():
            worker.close()
    parts = [p for side in sides for p in breakdown(rows, side)]
    meta = {"machine": platform.machine(), "cpu_count": os.cpu_count(), "rounds": args.rounds,
            "block": args.block, "warmup": args.warmup, "settle_seconds": args.settle,
            "date": date, "wall_seconds": round(time.perf_counter() - started, 1),
            "command": timing_worker.command_line(), "sides": sides, "env": env, **versions}
    payload = {**meta, "results": rows, "vid_i_breakdown": parts}
    write_results(out, payload)


def write_results(path: str, payload: dict) -> None:
    """The JSON file and, beside it, its markdown table (printed too)."""
    timing_worker.write_json(path, payload)
    rows = payload["results"]
    table = markdown(rows, payload["vid_i_breakdown"], payload)
    with open(os.path.splitext(path)[0] + ".md", "w") as f:
        f.write(table)
    print(table)
    stolen = [r["max_steal_share"] for r in rows if r["max_steal_share"] is not None]
    if stolen and max(stolen) > STEAL_WARNING:
        print(f"warning: the hypervisor took up to {100 * max(stolen):.0f}% of this VM's CPU "
              "time during some blocks (column 'steal'); rerun when the machine is quiet.")
    print(f"Wrote {path} and its .md")


if __name__ == "__main__":
    main()
