"""vid-jax against itself under other settings, in paired blocks (as compare_torch.py pairs
vid-jax with PyTorch): is an XLA flag, a device count or an environment variable faster?

Starts two `step_speed.py --serve` workers, A with this environment and B with `--env` added
to it, compiles the same step in both, then for `--rounds` rounds times a block of `--block`
steps in each, alternating which goes first, with a pause before each block. The speed of B
over A is taken per round (A's median step time over B's), so the machine's drift falls on
both. Prints the median and range and appends the run to a JSON file.

  .venv/bin/python benchmarks/ab_settings.py --step=vid_i --batch_size=128 \\
      --env="XLA_FLAGS=--xla_force_host_platform_device_count=1"
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

import compare_torch  # benchmarks/, beside this script
import timing_worker

ROOT = compare_torch.ROOT


def parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--env {pair!r}: expected NAME=VALUE.")
        env[name] = value
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step", default="vid_i", help="One of step_speed.py's steps.")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--env", action="append", default=[],
                        help="NAME=VALUE set for worker B only (repeatable).")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--block", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--settle", type=float, default=1.0)
    parser.add_argument("--out", default=os.path.join(
        ROOT, "benchmarks", "results", f"ab_settings_{platform.machine()}_cpu.json"))
    args = parser.parse_args()
    try:
        env = parse_env(args.env)
    except ValueError as error:
        parser.error(str(error))
    if not env or args.rounds < 1 or args.block < 1:
        parser.error("give at least one --env NAME=VALUE; --rounds and --block must be >= 1.")

    command = [sys.executable, os.path.join(ROOT, "benchmarks", "step_speed.py"), "--serve"]
    workers = {"A": compare_torch.Worker("A", command),
               "B": compare_torch.Worker("B", command, env)}
    medians: dict[str, list[float]] = {"A": [], "B": []}
    stolen: list[float | None] = []
    started = datetime.datetime.now(datetime.UTC)
    try:
        for w in workers.values():
            w.ask(cmd="prepare", step=args.step, batch_size=args.batch_size, warmup=args.warmup)
        for round_index in range(args.rounds):
            for name in ("A", "B") if round_index % 2 == 0 else ("B", "A"):
                time.sleep(args.settle)
                steal0, wall0 = timing_worker.steal_seconds(), time.perf_counter()
                reply = workers[name].ask(cmd="run", steps=args.block)
                timing_worker.check_loss(reply["final_loss"], f"{name} {args.step}")
                medians[name].append(statistics.median(reply["seconds"]))
                stolen.append(timing_worker.steal_share(
                    steal0, timing_worker.steal_seconds(), time.perf_counter() - wall0))
    except (RuntimeError, FloatingPointError) as error:  # a worker's error, or a NaN loss
        sys.exit(f"error: {error}")
    finally:
        for w in workers.values():
            w.close()
    speed = [a / b for a, b in zip(medians["A"], medians["B"])]
    run = {"date": started.isoformat(timespec="seconds"), "step": args.step,
           "batch_size": args.batch_size, "env_b": env, "rounds": args.rounds,
           "block": args.block, "a_median_step_seconds": [round(t, 4) for t in medians["A"]],
           "b_median_step_seconds": [round(t, 4) for t in medians["B"]],
           "speed_b_over_a": round(statistics.median(speed), 3),
           "speed_b_over_a_range": [round(min(speed), 3), round(max(speed), 3)],
           "max_steal_share": max((round(x, 3) for x in stolen if x is not None),
                                  default=None)}
    runs = []
    if os.path.exists(args.out):
        with open(args.out) as f:
            runs = json.load(f)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump([*runs, run], f, indent=2)
        f.write("\n")
    print(f"{args.step} at batch {args.batch_size}, B = {env}: speed of B over A "
          f"{run['speed_b_over_a']:.2f} (range {min(speed):.2f}-{max(speed):.2f} over "
          f"{args.rounds} rounds); wrote {args.out}")
    if (run["max_steal_share"] or 0) > compare_torch.STEAL_WARNING:
        print(f"warning: the hypervisor took up to {100 * run['max_steal_share']:.0f}% of this "
              "VM's CPU time during some blocks; rerun when the machine is quiet.")


if __name__ == "__main__":
    main()
