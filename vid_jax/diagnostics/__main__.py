"""`python -m vid_jax.diagnostics WORKDIR [--compare=OTHER ...]`: diagnostics of finished runs.

Writes into WORKDIR/diagnostics (or --out) diagnostics.json (the numbers) and the figures:
fig2_heatmaps.png (the VID paper's Fig. 2), vid_data_term.png, cka.png, attention.png and
learning_curves.png. Example, the quickstart's VID-I student beside its twin without transfer:

  python -m vid_jax.diagnostics workdirs/quickstart/student_vid_i \\
      --compare=workdirs/quickstart/student
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m vid_jax.diagnostics",
        description="Diagnostics of finished runs: VID's data term per layer pair, the VID "
                    "paper's Fig. 2 heat maps, linear CKA, attention maps, learning curves.")
    parser.add_argument("workdir", help="a finished run's workdir (config.json, checkpoints/)")
    parser.add_argument("--compare", action="append", default=[],
                        help="another run's workdir, diagnosed on the same teacher, layer "
                             "pairs and images (repeatable)")
    parser.add_argument("--teacher", help="the teacher's workdir (default: the run's "
                        "config.teacher.workdir; needed for a run trained without one)")
    parser.add_argument("--layers", help="comma-separated layers to pair with the teacher's "
                        "of the same name (default: the run's VID-I pairs, else group1-3)")
    parser.add_argument("--out", help="output directory (default: WORKDIR/diagnostics)")
    parser.add_argument("--num_examples", type=int, default=1000,
                        help="test images for the data term and CKA (the first N)")
    parser.add_argument("--num_images", type=int, default=4, help="images drawn in the maps")
    parser.add_argument("--fit_steps", type=int, default=2000,
                        help="Adam steps of the heads fitted to each frozen student")
    parser.add_argument("--fit_learning_rate", type=float, default=1e-2)
    parser.add_argument("--fit_max_images", type=int, default=4096,
                        help="training images the heads are fitted on (at most)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an input error")
    return parser.parse_args(argv)


def check_inputs(args: argparse.Namespace) -> str | None:
    """What is wrong with the command line, in one line, or None."""
    for workdir in [args.workdir, *args.compare] + ([args.teacher] if args.teacher else []):
        if not os.path.isfile(os.path.join(workdir, "config.json")):
            return (f"{workdir} is not a run's workdir (no config.json); give the workdir of "
                    "one run (a pipeline's runs are its subdirectories).")
    for workdir in [args.workdir, *args.compare]:
        if not os.path.isdir(os.path.join(workdir, "checkpoints")):
            return f"{workdir} has no checkpoints/: train the run first."
    for name in ("num_examples", "num_images", "fit_steps", "fit_max_images"):
        if getattr(args, name) < 1:
            return f"--{name} must be at least 1, got {getattr(args, name)}."
    return None


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    problem = check_inputs(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from vid_jax import diagnostics  # JAX starts here

    settings = diagnostics.FitSettings(steps=args.fit_steps,
                                       learning_rate=args.fit_learning_rate,
                                       max_images=args.fit_max_images, seed=args.seed)
    try:
        result = diagnostics.diagnose(
            args.workdir, compare=args.compare, teacher_workdir=args.teacher,
            layers=args.layers.split(",") if args.layers else None,
            num_examples=args.num_examples, num_images=args.num_images, fit=settings)
    except (ValueError, FileNotFoundError) as e:  # a teacher or layer the runs do not fit
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    paths = diagnostics.write(result, args.out or os.path.join(args.workdir, "diagnostics"))
    print(diagnostics.summary_table(result))
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
