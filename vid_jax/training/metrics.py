"""Per-step metrics summed on the host, the divergence check, and a run's summary."""
import os
from typing import Any

import jax
import numpy as np

from vid_jax.metric_writer import MetricWriter, read_metrics


class TrainingDiverged(FloatingPointError):
    """An epoch's summed losses are not finite; `workdir` is the run's (a search over weights
    records the run as diverged and goes on with the others)."""

    def __init__(self, message: str, workdir: str | None = None) -> None:
        super().__init__(message)
        self.workdir = workdir


def check_finite(totals: dict[str, float], epoch: int, workdir: str) -> None:
    """Stops a run whose loss became NaN or infinite, before that epoch writes anything."""
    losses = {k: v for k, v in totals.items() if k.endswith("loss")}
    if all(np.isfinite(v) for v in losses.values()):
        return
    shown = ", ".join(f"{k} {v:.4g}" for k, v in sorted(losses.items()))
    raise TrainingDiverged(
        f"training diverged in epoch {epoch}: the losses summed over its steps are {shown}. "
        f"{workdir} keeps the metrics and checkpoints of the epochs before it. Lower "
        "config.optimizer.learning_rate or the weight of the term that blew up "
        "(config.distill.<term>.weight) and train in a new workdir.", workdir)


class MetricSums:
    """Sums per-step metrics on the host while keeping at most two steps in flight.

    `add(metrics)` of step n fetches step n-1's metrics, so the host waits for step n-1 while
    step n runs and prepares batch n+1 meanwhile. Why bounded: a loop that never waits
    queues thousands of steps, and on several XLA CPU devices one device's all-reduce then
    waited more than 40 s for the other and XLA aborted the process ("Termination timeout for
    all reduce ... only 1 of them arrived"; benchmarks/README.md, "The train loop keeps two
    steps in flight"). Sums
    are float64 on the host, so thousands of steps add up without float32 round-off.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None
        self._sums: dict[str, float] = {}

    def _fetch_pending(self) -> None:
        if self._pending is not None:
            for k, v in jax.device_get(self._pending).items():
                self._sums[k] = self._sums.get(k, 0.0) + float(v)
            self._pending = None

    def add(self, metrics: dict[str, Any]) -> None:
        self._fetch_pending()
        self._pending = metrics

    def result(self) -> dict[str, float]:
        """The sums of every added step (waits for the last one)."""
        self._fetch_pending()
        return dict(self._sums)


def summarize(workdir: str, selection: str = "last") -> dict[str, Any]:
    """Final and best accuracies, the selected epoch, and each distillation term's loss at the
    first step (before any update), in the first epoch and in the last epoch, from a run's
    metrics.jsonl.

    `selection` says which epoch's variables the run exports (its `best/`): "validation" (the
    best validation accuracy, for a run that holds a validation split out), "last" (the last
    epoch: what a run without one exports, so nothing is chosen on the test set) or "test"
    (the best test accuracy; only to read runs of older versions). `best_test_accuracy`, the
    highest test accuracy over the evaluated epochs, is picked on the test set: a bound, not a
    result. A run with a validation split also gets its last and best validation accuracy
    (what a search over hyper-parameters ranks runs by)."""
    lines = read_metrics(os.path.join(workdir, MetricWriter.FILENAME))
    last = lines[-1]
    tested = [line for line in lines if "test_accuracy" in line]
    if selection == "last":
        selected = last
    else:
        selected = max((line for line in lines if f"{selection}_accuracy" in line),
                       key=lambda line: line[f"{selection}_accuracy"])
    not_terms = {"loss", "task_loss", "test_loss", "validation_loss"}
    term_losses = {k[:-len("_loss")]: {"first_step": lines[0].get(f"{k}_at_start"),
                                       "first_epoch": lines[0][k], "last_epoch": last[k]}
                   for k in last if k.endswith("_loss") and k not in not_terms}
    summary = {"epochs": last["epoch"], "final_test_accuracy": last["test_accuracy"],
               "best_test_accuracy": max(line["test_accuracy"] for line in tested),
               "selected_by": selection, "selected_epoch": selected["epoch"],
               "test_accuracy_at_best_selection": selected["test_accuracy"],
               "term_losses": term_losses}
    if selection != "last":
        summary[f"best_{selection}_epoch"] = selected["epoch"]
    if "validation_accuracy" in last:
        summary["final_validation_accuracy"] = last["validation_accuracy"]
        summary["best_validation_accuracy"] = max(
            line["validation_accuracy"] for line in lines if "validation_accuracy" in line)
    return summary
