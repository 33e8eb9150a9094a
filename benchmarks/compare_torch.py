"""vid-jax's train steps against the same steps in plain PyTorch, on this machine.

Runs `step_speed.py` (vid-jax, this virtualenv) and `torch_step.py` (PyTorch, its own
virtualenv) as separate processes, one after the other and alternating which goes first in
each round, so drifts in the machine's speed fall on both. Each framework uses all cores by
default: vid-jax one XLA CPU device per core (vid_jax.host), PyTorch one thread per core.
Writes a JSON file and a markdown table: images/s of each (median over rounds), their ratio,
time to the first step, and the breakdown of the VID-I step.

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
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = ("teacher", "student", "vid_i")


def run_one(framework: str, args: argparse.Namespace, out: str) -> dict:
    if framework == "jax":
        command = [sys.executable, os.path.join(ROOT, "benchmarks", "step_speed.py"),
                   f"--measure={','.join((*STEPS, 'teacher_forward'))}"]
    else:
        command = [args.torch_python, os.path.join(ROOT, "benchmarks", "torch_step.py"),
                   f"--measure={','.join(STEPS)}"]
        if args.torch_threads:
            command.append(f"--threads={args.torch_threads}")
    command += [f"--batch_sizes={args.batch_sizes}", f"--steps={args.steps}",
                f"--warmup={args.warmup}", f"--out={out}"]
    print("+", " ".join(os.path.relpath(c, ROOT) if c.startswith(ROOT) else c
                        for c in command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)
    with open(out) as f:
        return json.load(f)


def by_key(payload: dict) -> dict[tuple[str, int], dict]:
    return {(r["step"], r["batch_size"]): r for r in payload["results"]}


def summarize(rounds: list[dict[str, dict]], batch_sizes: list[int]) -> list[dict]:
    rows = []
    for batch in batch_sizes:
        for step in (*STEPS, "teacher_forward"):
            jax_runs = [by_key(r["jax"]).get((step, batch)) for r in rounds]
            torch_runs = [by_key(r["torch"]).get((step, batch)) for r in rounds]
            if any(j is None for j in jax_runs):
                continue
            row = {"step": step, "batch_size": batch, "model": jax_runs[0]["model"],
                   "jax_images_per_sec": [j["images_per_sec"] for j in jax_runs],
                   "jax_median_images_per_sec": statistics.median(
                       j["images_per_sec"] for j in jax_runs),
                   "jax_compile_seconds": max(j["compile_seconds"] for j in jax_runs),
                   "jax_median_step_seconds": statistics.median(
                       j["median_step_seconds"] for j in jax_runs)}
            if all(t is not None for t in torch_runs):
                row.update({
                    "torch_images_per_sec": [t["images_per_sec"] for t in torch_runs],
                    "torch_median_images_per_sec": statistics.median(
                        t["images_per_sec"] for t in torch_runs),
                    "torch_first_step_seconds": max(t["first_step_seconds"] for t in torch_runs)})
                row["ratio"] = round(row["jax_median_images_per_sec"]
                                     / row["torch_median_images_per_sec"], 3)
            rows.append(row)
    return rows


def breakdown(rows: list[dict]) -> list[dict]:
    """VID-I step = teacher forward + student step + distillation (heads, losses, their
    backward and update): the last is what is left of the VID-I step time."""
    seconds = {(r["step"], r["batch_size"]): r["jax_median_step_seconds"] for r in rows}
    out = []
    for batch in sorted({b for _, b in seconds}):
        try:
            vid, forward, student = (seconds[(k, batch)]
                                     for k in ("vid_i", "teacher_forward", "student"))
        except KeyError:
            continue
        distill = vid - forward - student
        out.append({"batch_size": batch, "vid_i_step_seconds": vid,
                    "teacher_forward_seconds": forward, "student_step_seconds": student,
                    "distillation_seconds": round(distill, 5),
                    "distillation_share_beyond_forward_and_student": round(
                        distill / (forward + student), 4)})
    return out


def markdown(rows: list[dict], parts: list[dict], meta: dict) -> str:
    lines = [f"# vid-jax vs PyTorch: train steps on {meta['machine']} ({meta['cpu_count']} cores)",
             "", f"{meta['date']}, {meta['rounds']} rounds alternating the order; JAX "
             f"{meta['jax']['jax_version']} on {meta['jax']['devices']} XLA CPU device(s), "
             f"PyTorch {meta['torch']['torch_version']} with {meta['torch']['threads']} "
             f"thread(s), channels_last={meta['torch']['channels_last']}.", "",
             "| step | model | batch | vid-jax images/s | PyTorch images/s | ratio | "
             "vid-jax compile (s) | PyTorch first step (s) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "ratio" not in r:
            continue
        lines.append(f"| {r['step']} | {r['model']} | {r['batch_size']} | "
                     f"{r['jax_median_images_per_sec']:.1f} | "
                     f"{r['torch_median_images_per_sec']:.1f} | {r['ratio']:.2f} | "
                     f"{r['jax_compile_seconds']:.1f} | {r['torch_first_step_seconds']:.1f} |")
    lines += ["", "Breakdown of vid-jax's VID-I step (median step seconds):", "",
              "| batch | VID-I step | teacher forward | student step | distillation | "
              "distillation / (forward + student) |", "|---:|---:|---:|---:|---:|---:|"]
    for p in parts:
        lines.append(f"| {p['batch_size']} | {p['vid_i_step_seconds']:.3f} | "
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
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=os.path.join(
        ROOT, "benchmarks", "results", f"jax_vs_torch_{platform.machine()}_cpu.json"))
    args = parser.parse_args()
    if not os.path.exists(args.torch_python):
        sys.exit(f"error: no PyTorch at {args.torch_python}; install the baseline with "
                 "`python3 -m venv .venv-torch && .venv-torch/bin/pip install torch==2.13.0 "
                 "numpy`, or pass --torch_python.")

    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            order = ("jax", "torch") if i % 2 == 0 else ("torch", "jax")
            rounds.append({fw: run_one(fw, args, os.path.join(tmp, f"{fw}{i}.json"))
                           for fw in order})
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    rows = summarize(rounds, batch_sizes)
    parts = breakdown(rows)
    meta = {"machine": platform.machine(), "cpu_count": os.cpu_count(), "rounds": args.rounds,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
            "jax": {k: v for k, v in rounds[0]["jax"].items() if k != "results"},
            "torch": {k: v for k, v in rounds[0]["torch"].items() if k != "results"}}
    payload = {**meta, "results": rows, "vid_i_breakdown": parts,
               "rounds_raw": rounds}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(payload, f, indent=2)
    table = markdown(rows, parts, meta)
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write(table)
    print(table)
    print(f"Wrote {args.out} and its .md")


if __name__ == "__main__":
    main()
