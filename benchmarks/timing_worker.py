"""What the benchmark scripts share: the summary of timed steps, the loss check, the
hypervisor's steal, the results file's header fields and its writing, and the line protocol by
which `compare_torch.py` drives its two timing workers (`step_speed.py --serve` in vid-jax's
virtualenv, `torch_step.py --serve` in PyTorch's, or two of `step_speed.py`).

Standard library only, because both virtualenvs import it. The controller writes one JSON
command per line to a worker's stdin; the worker answers each with one line on stdout that
starts with REPLY (anything else it prints is passed over):

  {"cmd": "prepare", "step": "vid_i", "batch_size": 128, "warmup": 2}
      -> {"info": {...}}  build and compile (or run the first step), then run `warmup` steps
  {"cmd": "run", "steps": 4}
      -> {"seconds": [...], "final_loss": x}  time that many more steps, one by one
  {"cmd": "about"}
      -> {"about": {...}}  versions and settings (framework version, devices or threads)
  {"cmd": "quit"}
      -> the worker exits

A failure answers {"error": "..."}. Only one worker runs steps at a time: the other waits,
blocked on its stdin, so each block of steps has the machine to itself.
"""
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

REPLY = "@@reply "
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the project's root


def command_line() -> str:
    """This run's command line, the script's path relative to the project root."""
    return " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def load_average(before: tuple[float, ...]) -> dict:
    """The 1, 5 and 15 min load averages when a run began and now. Other work on the machine
    slows every step: "before" above ~0.5 on a 2-core CPU means low figures ("after"
    includes the run itself)."""
    return {"before": [round(v, 2) for v in before],
            "after": [round(v, 2) for v in os.getloadavg()]}


def run_record(started: float, load_before: tuple[float, ...], **fields: Any) -> dict:
    """A results file's contents: `fields` (what ran, on what framework) after the machine,
    the date, the command, the wall time since `started` (time.perf_counter()) and the load."""
    return {**fields, "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "python": platform.python_version(), "date": utc_now(), "command": command_line(),
            "wall_seconds": round(time.perf_counter() - started, 1),
            "load_average_1_5_15_min": load_average(load_before)}


def write_json(path: str, payload: Any) -> None:
    """Writes `payload` to `path` through a temporary file, so that no half-written results
    file is left; creates the directory if needed."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def step_summary(seconds: list[float], batch_size: int) -> dict:
    """Median, mean and fastest of the timed steps, and images/s from the median and mean."""
    median, mean = statistics.median(seconds), statistics.fmean(seconds)
    return {"median_step_seconds": round(median, 5), "mean_step_seconds": round(mean, 5),
            "min_step_seconds": round(min(seconds), 5),
            "images_per_sec": round(batch_size / median, 2),
            "images_per_sec_mean": round(batch_size / mean, 2)}


def check_loss(loss: float | None, what: str) -> None:
    """Raises if a train step's last loss is NaN or infinite (None: not a train step)."""
    if loss is not None and not math.isfinite(loss):
        raise FloatingPointError(f"{what}: the loss is {loss}.")


def steal_seconds() -> float | None:
    """CPU time the hypervisor gave to other guests, summed over this VM's CPUs since boot
    (the "steal" column of Linux's /proc/stat); None where there is no such file.

    On a shared cloud machine steal is the largest source of noise in these benchmarks: here
    it went from ~0 to 50-70% of both cores within an hour, and every step slowed alike.
    """
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def steal_share(steal_before: float | None, steal_after: float | None,
                wall_seconds: float) -> float | None:
    """The share of the machine's CPU time stolen over `wall_seconds`, 0 to 1."""
    if steal_before is None or steal_after is None or wall_seconds <= 0:
        return None
    return (steal_after - steal_before) / (wall_seconds * (os.cpu_count() or 1))


def percent(share: float | None) -> str:
    """A steal share for a table: "12%", or "-" where it was not measured."""
    return "-" if share is None else f"{100 * share:.0f}%"


class Steal:
    """`with Steal() as steal: ...`, then `steal.share`: the share of the machine's CPU time
    stolen while the block ran, rounded to 3 decimals (None where Linux's /proc/stat is not)."""

    share: float | None = None

    def __enter__(self) -> "Steal":
        self._before, self._wall0 = steal_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc_info) -> None:
        share = steal_share(self._before, steal_seconds(), time.perf_counter() - self._wall0)
        self.share = None if share is None else round(share, 3)


class Prepared(Protocol):
    info: dict

    def run(self, steps: int) -> list[float]: ...

    def final_loss(self) -> float | None: ...


def serve(prepare: Callable[[str, int], Prepared], about: dict) -> None:
    """Answers commands from stdin until "quit" or end of input."""
    current = None
    for line in sys.stdin:
        command = json.loads(line)
        try:
            if command["cmd"] == "quit":
                return
            if command["cmd"] == "about":
                reply: dict[str, Any] = {"about": about}
            elif command["cmd"] == "prepare":
                current = None  # let the previous step's buffers go before building the next
                current = prepare(command["step"], command["batch_size"])
                current.run(command["warmup"])
                reply = {"info": current.info}
            elif command["cmd"] == "run":
                if current is None:
                    raise RuntimeError("'run' before any 'prepare'")
                reply = {"seconds": current.run(command["steps"]),
                         "final_loss": current.final_loss()}
            else:
                raise ValueError(f"unknown command {command['cmd']!r}")
        except Exception as error:  # the controller reports it and stops both workers
            reply = {"error": f"{type(error).__name__}: {error}"}
        print(REPLY + json.dumps(reply), flush=True)
