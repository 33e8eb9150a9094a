"""PyTorch baseline for `step_speed.py`: the same three train steps on random CIFAR-shaped
uint8 images, written plainly in eager PyTorch (RepDistiller style) and timed on the CPU.
PyTorch is a baseline only, never a dependency of vid_jax; it has its own virtualenv:

  python3 -m venv .venv-torch && .venv-torch/bin/pip install torch==2.13.0 numpy
  .venv-torch/bin/python benchmarks/torch_step.py  # -> results/torch_step_<machine>_cpu.json
  .venv-torch/bin/python benchmarks/torch_step.py --batch_sizes=128 --steps=20 --measure=vid_i
  (--serve: compare_torch.py's PyTorch worker instead, see timing_worker.py)

  teacher  WRN-40-2 alone: forward, cross-entropy, backward, SGD step
  student  WRN-16-1 alone, the same step
  vid_i    WRN-16-1 with CE + VID-I on group1-3 of a frozen WRN-40-2 (eval mode, no_grad);
           one SGD step updates the student and the three VID heads together
  teacher_forward  the frozen WRN-40-2's forward alone, as inside vid_i (for its breakdown)

As in vid_jax: pre-activation WRN-d-w (projection on the pre-activated input, BN momentum 0.1
= flax's 0.9, eps 1e-5), VID heads of three 1x1 convs with variance softplus(alpha) + 1e-5
starting at 5, SGD(lr 0.1, momentum 0.9, weight decay 5e-4 added to the gradient) on every
parameter, and data handling inside the step: crop after 4-pixel zero padding, flip (per
example, vectorised) and normalise. The random teacher's BN statistics are calibrated as in
step_speed.py. Reported: the first step's time (the analogue of compiling), then the median and
mean of `--steps` timed steps after `--warmup` untimed ones; images/s = batch / median.
On a CPU that other work keeps busy, OpenMP threads wait on each other at every op: use
`--threads=1` there (2 threads on a loaded 2-core machine measured ~40x slower).
"""
import argparse
import math
import os
import platform
import time
from collections.abc import Callable

import numpy as np
import timing_worker  # benchmarks/, beside this script; standard library only
import torch
import torch.nn.functional as F
from torch import nn

ROOT = timing_worker.ROOT
# teacher_forward: the frozen teacher's eval-mode forward alone (normalise, forward), as inside
# the vid_i step, for the breakdown vid_i = teacher forward + student step + distillation.
KINDS = ("teacher", "student", "vid_i", "teacher_forward")
ARCH = {"teacher": (40, 2), "student": (16, 1)}  # (depth, width)
NUM_CLASSES, PADDING = 10, 4
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # configs' CIFAR-10 statistics


# Models, as vid_jax.models.wide_resnet and vid_jax.heads.VIDHead define them.
def bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-5, momentum=0.1)  # flax momentum 0.9


class BasicBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3, with a 1x1 projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1, self.bn2 = bn(cin), bn(cout)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, padding=1, bias=False)
        self.shortcut = (nn.Conv2d(cin, cout, 1, stride, bias=False)
                         if cin != cout or stride != 1 else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        preact = F.relu(self.bn1(x))
        # The projection reads the pre-activated input, as in the authors' code (and vid_jax).
        shortcut = x if self.shortcut is None else self.shortcut(preact)
        y = self.conv2(F.relu(self.bn2(self.conv1(preact))))
        return y + shortcut


class WideResNet(nn.Module):
    """WRN-depth-width; returns the logits and group1..3 (block outputs before the last BN-ReLU)."""

    def __init__(self, depth: int, width: int, num_classes: int = NUM_CLASSES):
        super().__init__()
        n = (depth - 4) // 6
        self.channels = [16 * width, 32 * width, 64 * width]
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        cin, groups = 16, []
        for cout, stride in zip(self.channels, (1, 2, 2)):
            groups.append(nn.Sequential(*[BasicBlock(cin if i == 0 else cout, cout,
                                                     stride if i == 0 else 1) for i in range(n)]))
            cin = cout
        self.groups = nn.ModuleList(groups)
        self.bn = bn(cin)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():  # kaiming_normal_(fan_out), as vid_jax's conv_init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x, features = self.stem(x), []
        for group in self.groups:
            x = group(x)
            features.append(x)
        x = F.relu(self.bn(x)).mean(dim=(2, 3))
        return self.fc(x), features


class VIDHead(nn.Module):
    """-log q(t | s) with mean mu(s) (three 1x1 convs) and a learned variance per channel."""

    def __init__(self, cs: int, ct: int, init_variance: float = 5.0, eps: float = 1e-5):
        super().__init__()
        self.mu = nn.Sequential(nn.Conv2d(cs, ct, 1), nn.ReLU(), nn.Conv2d(ct, ct, 1), nn.ReLU(),
                                nn.Conv2d(ct, ct, 1))
        # Inverse softplus, so softplus(alpha) + eps == init_variance at step 0.
        self.alpha = nn.Parameter(torch.full((ct,), math.log(math.expm1(init_variance - eps))))
        self.eps = eps

    def forward(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h, w = min(s.shape[2], t.shape[2]), min(s.shape[3], t.shape[3])  # match_spatial
        s, t = F.adaptive_avg_pool2d(s, (h, w)), F.adaptive_avg_pool2d(t, (h, w))
        var = (F.softplus(self.alpha) + self.eps).view(1, -1, 1, 1)
        return (0.5 * ((t - self.mu(s)) ** 2 / var + var.log())).mean()


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# The step's data handling: uint8 NHWC in, normalised float NCHW out.
def normalize(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    x = (images.float() / 255.0 - torch.tensor(MEAN)) / torch.tensor(STD)
    x = x.permute(0, 3, 1, 2)  # NHWC storage viewed as NCHW is already channels_last
    return x.contiguous(memory_format=torch.channels_last if channels_last
                        else torch.contiguous_format)


def augment(images: torch.Tensor, gen: torch.Generator, channels_last: bool) -> torch.Tensor:
    """Random crop after zero padding and random flip, per example by one gather, then normalise.

    Crop and flip act on the uint8 images (zero padding precedes normalisation), as in vid_jax.
    """
    b, h, w, _ = images.shape
    padded = F.pad(images, (0, 0, PADDING, PADDING, PADDING, PADDING))
    dy, dx = torch.randint(0, 2 * PADDING + 1, (2, b, 1), generator=gen)
    flip = torch.rand(b, 1, generator=gen) < 0.5
    cols = torch.arange(w).expand(b, w)
    rows, cols = dy + torch.arange(h), dx + torch.where(flip, w - 1 - cols, cols)
    crops = padded[torch.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]
    return normalize(crops, channels_last)


_TEACHERS: dict[tuple[int, bool], WideResNet] = {}  # calibrated once, used at every batch size


def frozen_teacher(seed: int, channels_last: bool, passes: int = 30) -> WideResNet:
    """A random WRN-40-2 whose BN statistics are calibrated by train-mode passes on random
    images, as step_speed.py does: with the initial ones VID-I's loss overflows within steps."""
    if (seed, channels_last) not in _TEACHERS:
        torch.manual_seed(seed)
        teacher = WideResNet(*ARCH["teacher"])
        teacher = teacher.to(memory_format=torch.channels_last) if channels_last else teacher
        images = np.random.default_rng(seed).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
        x = normalize(torch.from_numpy(images), channels_last)
        with torch.no_grad():
            for _ in range(passes):
                teacher(x)
        _TEACHERS[seed, channels_last] = teacher.eval().requires_grad_(False)
    return _TEACHERS[seed, channels_last]


def make_step(kind: str, images: torch.Tensor, labels: torch.Tensor, seed: int,
              channels_last: bool) -> tuple[Callable[[], torch.Tensor], str]:
    """A fresh model and optimizer, and a closure that runs one train step and returns the loss."""
    if kind == "teacher_forward":
        teacher = frozen_teacher(seed + 1, channels_last)

        def forward() -> torch.Tensor:  # normalise and forward, as step_speed.py's
            with torch.no_grad():
                _, features = teacher(normalize(images, channels_last))
            return features[-1].mean()

        return forward, "WRN-{}-{}".format(*ARCH["teacher"])
    torch.manual_seed(seed)
    student = WideResNet(*ARCH["teacher" if kind == "teacher" else "student"]).train()
    teacher = frozen_teacher(seed + 1, channels_last) if kind == "vid_i" else None
    heads = nn.ModuleList([VIDHead(cs, ct) for cs, ct in
                           zip(student.channels, teacher.channels)] if teacher else [])
    if channels_last:
        student, heads = (m.to(memory_format=torch.channels_last) for m in (student, heads))
    # One optimizer over student and heads, as vid_jax's (head_optimizer = the student's).
    opt = torch.optim.SGD([*student.parameters(), *heads.parameters()], lr=0.1, momentum=0.9,
                          weight_decay=5e-4)
    gen = torch.Generator().manual_seed(seed)

    def step() -> torch.Tensor:
        x = augment(images, gen, channels_last)
        logits, features = student(x)
        loss = F.cross_entropy(logits, labels)
        if teacher is not None:
            with torch.no_grad():
                _, teacher_features = teacher(x)
            loss = loss + sum(head(s, t) for head, s, t in
                              zip(heads, features, teacher_features))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    name = "WRN-{}-{}".format(*ARCH["teacher" if kind == "teacher" else "student"])
    return step, name + (" <- WRN-40-2" if teacher else "")


class PreparedStep:
    """A step closure and its first step's time; `run(n)` times n more steps."""

    def __init__(self, step: Callable[[], torch.Tensor], info: dict, loss: torch.Tensor):
        self.step, self.info, self.loss = step, info, loss

    def run(self, steps: int) -> list[float]:
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            self.loss = self.step()  # CPU eager is synchronous: done when it returns
            times.append(time.perf_counter() - t0)
        return times

    def final_loss(self) -> float | None:
        """The last train step's loss (None for the teacher forward)."""
        if self.info["step"] == "teacher_forward":
            return None
        return self.loss.item()


def prepare(kind: str, batch_size: int, seed: int, channels_last: bool) -> PreparedStep:
    """Builds one of KINDS at `batch_size` and runs its first step (the analogue of compiling)."""
    if kind not in KINDS:
        raise ValueError(f"unknown step {kind!r}; choose from {', '.join(KINDS)}.")
    rng = np.random.default_rng([seed, batch_size])
    images = torch.from_numpy(rng.integers(0, 256, (batch_size, 32, 32, 3), dtype=np.uint8))
    labels = torch.from_numpy(rng.integers(0, NUM_CLASSES, (batch_size,)))
    step, model = make_step(kind, images, labels, seed, channels_last)
    t0 = time.perf_counter()
    loss = step()
    info = {"step": kind, "model": model, "batch_size": batch_size,
            "first_step_seconds": round(time.perf_counter() - t0, 3)}
    return PreparedStep(step, info, loss)


def measure(kind: str, batch_size: int, steps: int, warmup: int, seed: int,
            channels_last: bool) -> dict:
    prepared = prepare(kind, batch_size, seed, channels_last)
    prepared.run(warmup)
    with timing_worker.Steal() as steal:
        times = prepared.run(steps)
    final = prepared.final_loss()
    timing_worker.check_loss(final, f"{kind} at batch {batch_size}")
    result = {**prepared.info, **timing_worker.step_summary(times, batch_size),
              "steps": steps, "warmup": warmup,
              "steal_share": steal.share}
    if final is not None:
        result["final_loss"] = round(final, 5)
    return result


def markdown_table(results: list[dict]) -> str:
    # step_speed.py's table with the first step for compile: that script imports JAX, which
    # this virtualenv does not have.
    lines = ["| step | model | batch | first step (s) | median step (s) | images/s "
             "| images/s (mean) |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['step']} | {r['model']} | {r['batch_size']} | "
                     f"{r['first_step_seconds']:.1f} | {r['median_step_seconds']:.3f} | "
                     f"{r['images_per_sec']:.1f} | {r['images_per_sec_mean']:.1f} |")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch_sizes", default="64,128", help="Comma-separated batch sizes.")
    p.add_argument("--steps", type=int, default=20, help="Timed steps per (step, batch size).")
    p.add_argument("--warmup", type=int, default=2, help="Untimed steps after the first.")
    p.add_argument("--measure", default=",".join(KINDS), help=f"Which steps to time, of {KINDS}.")
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="torch intra-op threads; 1 where other work keeps the CPU busy.")
    p.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=True,
                   help="NHWC memory format for models and inputs.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the images and initial weights.")
    p.add_argument("--serve", action="store_true",
                   help="Run as compare_torch.py's timing worker (see timing_worker.py).")
    p.add_argument("--out", default=os.path.join(
        ROOT, "benchmarks", "results", f"torch_step_{platform.machine()}_cpu.json"),
        help="Where the JSON results go.")
    args = p.parse_args()
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    args.measure = args.measure.split(",")
    if [k for k in args.measure if k not in KINDS] or min(args.batch_sizes) <= 0:
        p.error(f"--measure must name steps of {KINDS}; --batch_sizes must be positive.")
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be at least 1 and --warmup at least 0.")
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.serve:
        timing_worker.serve(
            lambda kind, batch_size: prepare(kind, batch_size, args.seed, args.channels_last),
            about={"torch_version": torch.__version__, "threads": torch.get_num_threads(),
                   "channels_last": args.channels_last})
        return
    print("parameters: " + ", ".join(
        f"WRN-{d}-{w} {count_params(WideResNet(d, w)):,}" for d, w in ARCH.values())
        + f", VID heads {count_params(nn.ModuleList(map(VIDHead, (16, 32, 64), (32, 64, 128)))):,}")
    started, load_before = time.perf_counter(), os.getloadavg()
    results = []
    for batch_size in args.batch_sizes:
        for kind in args.measure:
            r = measure(kind, batch_size, args.steps, args.warmup, args.seed, args.channels_last)
            results.append(r)
            print(f"{kind:8s} {r['model']:22s} batch {batch_size:4d}: first step "
                  f"{r['first_step_seconds']:6.1f} s, median step {r['median_step_seconds']:.3f} "
                  f"s, {r['images_per_sec']:8.1f} images/s", flush=True)
    payload = timing_worker.run_record(
        started, load_before, framework="pytorch", torch_version=torch.__version__,
        threads=torch.get_num_threads(), channels_last=args.channels_last)
    payload["results"] = results
    timing_worker.write_json(args.out, payload)
    print(f"\npytorch {payload['torch_version']}, {payload['threads']} threads, channels_last="
          f"{args.channels_last}, {payload['cpu_count']} CPUs, {payload['date']}")
    print(markdown_table(results))
    print(f"\nWrote {args.out} ({payload['wall_seconds']:.0f} s).")


if __name__ == "__main__":
    main()
