"""vid-jax's train steps against the same steps in plain PyTorch, on this machine.

Starts two timing workers, `step_speed.py --serve` (vid-jax, this virtualenv) and
`torch_step.py --serve` (PyTorch, its own virtualenv), and keeps them both for the whole run.
For each (step, batch size) both build and compile (or run their first step) and warm up; then,
for `--rounds` rounds, each times a block of `--block` steps in turn, alternating which goes
first, while the other waits idle. A ratio is taken per round from the two adjacent blocks, so
a drift in this machine's speed (+-15% and more between minutes here) falls on both sides of it.
Each framework uses all cores by default: vid-jax one XLA CPU device per core (vid_jax.host),
PyTorch one thread per core.

Writes a JSON file and a markdown table: images/s of each (batch / median step time over all
its timed steps), the median and range of the per-round ratios, the time to the first step,
and the breakdown of each framework's VID-I step.

  python3 -m venv .venv-torch && .venv-torch/bin/pip install torch==2.13.0 numpy
  .venv/bin/python benchmarks/compare_torch.py            # -> benchmarks/results/jax_vs_torch_*
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import timing_worker  # benchmarks/, beside this script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = ("teacher", "student", "vid_i")
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


def start_workers(args: argparse.Namespace) -> dict[str, Worker]:
    torch_command = [args.torch_python, os.path.join(ROOT, "benchmarks", "torch_step.py"),
                     "--serve"]
    if args.torch_threads:
        torch_command.append(f"--threads={args.torch_threads}")
    return {"jax": Worker("vid-jax", [sys.executable, os.path.join(
                ROOT, "benchmarks", "step_speed.py"), "--serve"]),
            "torch": Worker("PyTorch", torch_command)}


def compare(workers: dict[str, Worker], step: str, batch: int, args: argparse.Namespace) -> dict:
    """Both frameworks' timings of one step, in alternating blocks, with per-round ratios."""
    infos = {fw: w.ask(cmd="prepare", step=step, batch_size=batch, warmup=args.warmup)["info"]
             for fw, w in workers.items()}
    blocks: dict[str, list[list[float]]] = {fw: [] for fw in workers}
    stolen: dict[str, list[float | None]] = {fw: [] for fw in workers}
    for round_index in range(args.rounds):
        order = ("jax", "torch") if round_index % 2 == 0 else ("torch", "jax")
        for fw in order:
            time.sleep(args.settle)  # the other side's idle threads stop spinning
            steal0, wall0 = timing_worker.steal_seconds(), time.perf_counter()
            reply = workers[fw].ask(cmd="run", steps=args.block)
            stolen[fw].append(timing_worker.steal_share(
                steal0, timing_worker.steal_seconds(), time.perf_counter() - wall0))
            timing_worker.check_loss(reply["final_loss"],
                                     f"{workers[fw].name} {step} at batch {batch}")
            blocks[fw].append(reply["seconds"])
    # Per round, images/s of vid-jax over PyTorch's = PyTorch's median time over vid-jax's.
    ratios = [statistics.median(t) / statistics.median(j)
              for j, t in zip(blocks["jax"], blocks["torch"])]
    row = {"step": step, "batch_size": batch, "model": infos["jax"]["model"],
           "jax_compile_seconds": infos["jax"]["compile_seconds"],
           "torch_first_step_seconds": infos["torch"]["first_step_seconds"],
           "ratio": round(statistics.median(ratios), 3),
           "ratio_min": round(min(ratios), 3), "ratio_max": round(max(ratios), 3),
           "round_ratios": [round(r, 3) for r in ratios],
           # Share of CPU time the hypervisor took from this VM during each block (Linux).
           "steal_share": {fw: [None if x is None else round(x, 3) for x in v]
                           for fw, v in stolen.items()}}
    add_steal_summary(row)
    for fw, fw_blocks in blocks.items():
        seconds = [t for block in fw_blocks for t in block]
        median = statistics.median(seconds)
        row.update({f"{fw}_median_step_seconds": round(median, 5),
                    f"{fw}_median_images_per_sec": round(batch / median, 2),
                    f"{fw}_step_seconds": [round(t, 5) for t in seconds]})
    return row


def add_steal_summary(row: dict) -> None:
    """The largest steal share of any block, and the ratio over the quiet rounds only (both
    blocks at most STEAL_WARNING stolen)."""
    steal = row["steal_share"]
    shares = [x for v in steal.values() for x in v if x is not None]
    row["max_steal_share"] = round(max(shares), 3) if shares else None
    quiet = [r for r, j, t in zip(row["round_ratios"], steal["jax"], steal["torch"])
             if (j or 0) <= STEAL_WARNING and (t or 0) <= STEAL_WARNING]
    row["quiet_rounds"] = len(quiet)
    row["ratio_quiet"] = round(statistics.median(quiet), 3) if quiet else None


def breakdown(rows: list[dict], framework: str) -> list[dict]:
    """VID-I step = teacher forward + student step + distillation (heads, losses, their
    backward and update): the last is what is left of the VID-I step time."""
    key = f"{framework}_median_step_seconds"
    seconds = {(r["step"], r["batch_size"]): r[key] for r in rows if key in r}
    out = []
    for batch in sorted({b for _, b in seconds}):
        try:
            vid, forward, student = (seconds[(k, batch)]
                                     for k in ("vid_i", "teacher_forward", "student"))
        except KeyError:
            continue
        distill = vid - forward - student
        out.append({"framework": framework, "batch_size": batch, "vid_i_step_seconds": vid,
                    "teacher_forward_seconds": forward, "student_step_seconds": student,
                    "distillation_seconds": round(distill, 5),
                    "distillation_share_beyond_forward_and_student": round(
                        distill / (forward + student), 4)})
    return out


def markdown(rows: list[dict], parts: list[dict], meta: dict) -> str:
    lines = [f"# vid-jax vs PyTorch: train steps on {meta['machine']} ({meta['cpu_count']} cores)",
             "", f"{meta['date']}; per step, {meta['rounds']} rounds of {meta['block']} timed "
             f"steps per framework (after {meta['warmup']} warm-up steps), alternating which goes "
             "first; JAX "
             f"{meta['jax']['jax_version']} on {meta['jax']['devices']} XLA CPU device(s), "
             f"PyTorch {meta['torch']['torch_version']} with {meta['torch']['threads']} "
             f"thread(s), channels_last={meta['torch']['channels_last']}.", "",
             "Images/s: batch / median step time over all rounds. Ratio: median (and range) "
             "over rounds of vid-jax's images/s over PyTorch's in the same round. Steal: the "
             "largest share of CPU time the hypervisor took from this VM in any block; quiet "
             f"rounds: those whose two blocks had at most {100 * STEAL_WARNING:.0f}% stolen.", "",
             "| step | model | batch | vid-jax images/s | PyTorch images/s | ratio | "
             "ratio range | ratio, quiet rounds (n) | vid-jax compile (s) | "
             "PyTorch first step (s) | steal (max) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "ratio" not in r:
            continue
        lines.append(f"| {r['step']} | {r['model']} | {r['batch_size']} | "
                     f"{r['jax_median_images_per_sec']:.1f} | "
                     f"{r['torch_median_images_per_sec']:.1f} | {r['ratio']:.2f} | "
                     f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f} | "
                     + ("-" if r["ratio_quiet"] is None else f"{r['ratio_quiet']:.2f}")
                     + f" ({r['quiet_rounds']}) | "
                     f"{r['jax_compile_seconds']:.1f} | {r['torch_first_step_seconds']:.1f} | "
                     + ("-" if r["max_steal_share"] is None
                        else f"{100 * r['max_steal_share']:.0f}%") + " |")
    names = {"jax": "vid-jax", "torch": "PyTorch"}
    lines += ["", "Breakdown of the VID-I step (median step seconds; teacher forward timed alone):",
              "", "| framework | batch | VID-I step | teacher forward | student step | "
              "distillation | distillation / (forward + student) |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for p in sorted(parts, key=lambda p: (p["batch_size"], p["framework"])):
        lines.append(f"| {names[p['framework']]} | {p['batch_size']} | "
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
    parser.add_argument("--batch_sizes", default="64,128")
    parser.add_argument("--rounds", type=int, default=5, help="Blocks per framework.")
    parser.add_argument("--block", type=int, default=4, help="Timed steps per block.")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed steps after compiling.")
    parser.add_argument("--settle", type=float, default=1.0,
                        help="Seconds of pause before each block, so that the worker that just "
                        "ran (OpenMP and XLA's pool threads spin a while when idle) is asleep.")
    parser.add_argument("--out", default=os.path.join(
        ROOT, "benchmarks", "results", f"jax_vs_torch_{platform.machine()}_cpu.json"))
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
    if args.rounds < 1 or args.block < 1 or args.warmup < 0:
        parser.error("--rounds and --block must be at least 1, --warmup at least 0.")
    if not os.path.exists(args.torch_python):
        sys.exit(f"error: no PyTorch at {args.torch_python}; install the baseline with "
                 "`python3 -m venv .venv-torch && .venv-torch/bin/pip install torch==2.13.0 "
                 "numpy`, or pass --torch_python.")

    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    started = datetime.datetime.now(datetime.UTC)
    workers = start_workers(args)
    rows = []
    try:
        versions = {fw: w.ask(cmd="about")["about"] for fw, w in workers.items()}
        for batch in batch_sizes:
            for step in (*STEPS, "teacher_forward"):
                row = compare(workers, step, batch, args)
                rows.append(row)
                print(f"{step:15s} batch {batch:4d}: vid-jax "
                      f"{row['jax_median_images_per_sec']:7.1f}, PyTorch "
                      f"{row['torch_median_images_per_sec']:7.1f} images/s, ratio "
                      f"{row['ratio']:.2f} ({row['ratio_min']:.2f}-{row['ratio_max']:.2f})"
                      + ("" if row["max_steal_share"] is None
                         else f", steal up to {100 * row['max_steal_share']:.0f}%"),
                      flush=True)
    except RuntimeError as error:  # a worker's error, already named by Worker.ask
        sys.exit(f"error: {error}")
    finally:
        for worker in workers.values():
            worker.close()
    parts = breakdown(rows, "jax") + breakdown(rows, "torch")
    meta = {"machine": platform.machine(), "cpu_count": os.cpu_count(), "rounds": args.rounds,
            "block": args.block, "warmup": args.warmup, "settle_seconds": args.settle,
            "date": started.isoformat(timespec="seconds"),
            "wall_seconds": round((datetime.datetime.now(datetime.UTC) - started)
                                  .total_seconds(), 1),
            "command": " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
            "jax": versions["jax"], "torch": versions["torch"]}
    payload = {**meta, "results": rows, "vid_i_breakdown": parts}
    write_results(args.out, payload)


def write_results(path: str, payload: dict) -> None:
    """The JSON file and, beside it, its markdown table (printed too)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
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
