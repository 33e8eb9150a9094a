"""The loop: a run's stages, then its main stage, each epoch evaluated, checkpointed, logged.

A run's workdir holds `checkpoints/` (the whole train state, for resuming), `best/` (the
model variables of the best epoch), `metrics.jsonl`, `tensorboard/`, `config.json` and at
the end `summary.json`. Running it again resumes from the latest checkpoint.

Several runs that see the same batches (the rows of one table column and seed, the candidate
weights of one term) can train together (`train_together`): one jitted step computes the
augmentation and the teacher's forward once and updates every run; each run keeps its own
workdir, optimizer state, checkpoints, metrics and summary, as if trained alone.

A workdir is trained by one job at a time (`vid_jax.workdir.locked`) and under one config:
a rerun with other values is refused before anything is written, unless the changed fields
are allowed (`allow_changes`; each change is recorded with its first epoch).

A job of several processes (`vid_jax.distributed`) trains as one: every process runs this
loop, and the checkpoints are saved and restored by all of them; the first process alone
writes the metrics, TensorBoard, config.json and summary.json, and the others wait for it
where they read what it wrote.
"""
import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import ml_collections
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from vid_jax import data, distributed, methods
from vid_jax.checkpoints import Checkpoints
from vid_jax.metric_writer import MetricWriter, NoMetricWriter, read_metrics, write_atomically
from vid_jax.training.mesh import AXIS
from vid_jax.training.metrics import MetricSums, check_finite, summarize
from vid_jax.training.prepare import Batch, Run, check_shareable, prepare, shared_train_step
from vid_jax.training.step import TrainState, evaluate, make_eval_step
from vid_jax.workdir import (
    CONFIG,
    SUMMARY,
    Change,
    check_not_in_use,
    check_resume,
    check_writable,
    locked,
    record_changes,
)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       dataset: data.Dataset | None = None,
                       allow_changes: Sequence[str] = ()) -> dict[str, Any]:
    """Trains `config` in `workdir`, resuming from its latest checkpoint; returns the summary.

    Stages that the config's terms declare (FitNet's hints, FT's paraphraser...) run first,
    each in `workdir/stages/<name>` with its own checkpoints; the main stage starts from the
    weights the last one ended with. A workdir that trained under another config is refused
    (`vid_jax.workdir.check_resume`) unless the fields that differ are in `allow_changes`.
    """
    return train_together([config], [workdir], dataset, allow_changes)[0]


def _stage_workdir(workdir: str, stage: methods.Stage) -> str:
    return os.path.join(workdir, "stages", stage.name)


def train_together(configs: Sequence[ml_collections.ConfigDict], workdirs: Sequence[str],
                   dataset: data.Dataset | None = None,
                   allow_changes: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Trains several runs that see the same batches (`prepare.check_shareable`), each in its
    workdir, their main stages in one shared step; returns their summaries.

    A run's stages before the main one (which the others may not have) run alone first. Each
    run gives the results it gives when trained alone, up to float round-off.
    """
    if len(configs) != len(workdirs) or not configs:
        raise ValueError(f"{len(configs)} configs for {len(workdirs)} workdirs.")
    for config, workdir in zip(configs, workdirs):  # before anything is read or written
        check_writable(workdir)
        check_not_in_use(workdir)
        check_resume(workdir, config, allow_changes)
    check_shareable(configs)
    if dataset is None:  # read once for all: the runs share config.data
        dataset = data.load_dataset(configs[0].data)
    runs = [prepare(config, dataset) for config in configs]
    with contextlib.ExitStack() as held:
        for workdir in workdirs:
            held.enter_context(locked(workdir))
        states, stages = [], []
        for run, workdir in zip(runs, workdirs):
            state, done = run.state, {}
            for stage in run.stages:
                if stage.epochs > 0:
                    if run.config.get("log_epochs", True) and distributed.is_primary():
                        print(f"stage {stage.name}: {stage.description} ({stage.epochs} "
                              "epochs)")
                    state, done[stage.name] = train_stage(
                        run, state, _stage_workdir(workdir, stage), stage,
                        allow_changes=allow_changes)
            states.append(state)
            stages.append(done)
        _, summaries = train_stage_together(runs, states, workdirs, stages_before=stages,
                                            allow_changes=allow_changes)
    return summaries


def train_stage(run: Run, previous: TrainState, workdir: str,
                stage: methods.Stage | None = None,
                stages_before: dict[str, dict[str, Any]] | None = None,
                allow_changes: Sequence[str] = ()) -> tuple[TrainState, dict[str, Any]]:
    """Trains one stage in `workdir` from the weights of `previous`, resuming from the
    workdir's latest checkpoint; returns the final state and the summary (which records the
    summaries of `stages_before`)."""
    (state,), (summary,) = train_stage_together([run], [previous], [workdir], stage,
                                                [stages_before], allow_changes)
    return state, summary


@dataclasses.dataclass
class _Progress:
    """One run's side of a stage: its state, what it writes, and its best epoch so far."""

    run: Run
    workdir: str
    state: TrainState
    checkpoints: Checkpoints
    writer: MetricWriter | NoMetricWriter  # the first process writes; the others do not
    start_epoch: int
    eval_step: Any
    selection: str  # what chooses the epoch the run exports (`_selection`)
    best_accuracy: float | None
    # A resumed run's config changes (possibly none), written with its first epoch's metrics.
    pending_changes: list[Change] | None
    compile_seconds: float = 0.0

    def start_writing(self, epoch: int) -> None:
        """Before a resumed run's first epoch writes: the run is no longer finished, and
        trains under its config from `epoch` on."""
        if self.pending_changes is None or not distributed.is_primary():
            return
        summary = os.path.join(self.workdir, SUMMARY)
        if os.path.exists(summary):
            os.remove(summary)
        record_changes(self.workdir, self.pending_changes, epoch)
        write_atomically(os.path.join(self.workdir, CONFIG),
                         self.run.config.to_json_best_effort(indent=2))
        self.pending_changes = None


def _selection(run: Run) -> str:
    """What chooses the epoch a run exports: its validation split, else its last epoch."""
    return "validation" if run.dataset.validation is not None else "last"


def _best_so_far(workdir: str, up_to: int, selection: str, num_epochs: int
                 ) -> tuple[int | None, float | None]:
    """The epoch (<= up_to) the run has chosen so far by its metrics (`summarize`'s choice:
    the first of equal validation accuracies; the last epoch once it is trained), and its
    accuracy."""
    path = os.path.join(workdir, MetricWriter.FILENAME)
    key = "test_accuracy" if selection == "last" else f"{selection}_accuracy"
    best = (None, None)
    for line in read_metrics(path) if os.path.exists(path) else []:
        if line["epoch"] > up_to or key not in line:
            continue
        if selection == "last" and line["epoch"] == num_epochs or \
                selection != "last" and (best[1] is None or line[key] > best[1]):
            best = (line["epoch"], line[key])
    return best


def _open(run: Run, previous: TrainState, workdir: str, stage: methods.Stage | None,
          num_epochs: int, allow_changes: Sequence[str]) -> _Progress:
    """The stage's state from `previous`, or from the workdir's latest checkpoint (the
    workdir's lock is held)."""
    state = run.place(run.start_stage(stage, previous))
    changes = check_resume(workdir, run.config, allow_changes)
    # Validation passed: from here on the workdir is written.
    primary = distributed.is_primary()
    os.makedirs(workdir, exist_ok=True)
    checkpoints = Checkpoints(workdir)  # every process saves and restores
    start_epoch = 0
    restored = checkpoints.restore_latest(state)
    if restored is not None:
        state, start_epoch = restored
    pending = None
    if restored is None:  # a fresh start (a kill before the first save left nothing to keep)
        if primary:
            write_atomically(os.path.join(workdir, CONFIG),
                             run.config.to_json_best_effort(indent=2))
    elif start_epoch < num_epochs:  # recorded when the first epoch under it ends (_end_epoch)
        pending = changes
    writer = MetricWriter(workdir, resume_epoch=start_epoch) if primary else NoMetricWriter()
    distributed.sync("vid_jax: workdir opened")  # the metrics the others read next are resumed
    selection = _selection(run)
    best_epoch, best_accuracy = _best_so_far(workdir, start_epoch, selection, num_epochs)
    checkpoints.reconcile_best(best_epoch, best_accuracy, start_epoch,
                               {"params": state.params["student"],
                                "batch_stats": state.batch_stats})
    return _Progress(run, workdir, state, checkpoints, writer, start_epoch,
                     make_eval_step(run.student, run.mesh, run.config), selection,
                     best_accuracy, pending)


def train_stage_together(runs: Sequence[Run], previous: Sequence[TrainState],
                         workdirs: Sequence[str], stage: methods.Stage | None = None,
                         stages_before: Sequence[dict[str, Any] | None] | None = None,
                         allow_changes: Sequence[str] = ()
                         ) -> tuple[list[TrainState], list[dict[str, Any]]]:
    """`train_stage` of several runs in one shared step. A run whose workdir resumes from an
    earlier epoch than another's first trains alone up to it."""
    num_epochs = {(r.config.num_epochs if stage is None else stage.epochs) for r in runs}
    if len(num_epochs) > 1:
        raise ValueError(f"Runs that share a step must train as many epochs; got "
                         f"{sorted(num_epochs)}.")
    (num_epochs,) = num_epochs
    progress = []
    try:
        for run, state, workdir in zip(runs, previous, workdirs, strict=True):
            progress.append(_open(run, state, workdir, stage, num_epochs, allow_changes))
        together_from = max(p.start_epoch for p in progress)
        for p in progress:
            if p.start_epoch < together_from:
                _train_epochs([p], stage, p.start_epoch + 1, together_from, num_epochs)
        _train_epochs(progress, stage, together_from + 1, num_epochs, num_epochs)
    finally:  # closed also on an error, so the checkpoints saved so far are complete
        for p in progress:
            p.writer.close()
            p.checkpoints.close()

    distributed.sync("vid_jax: stage trained")  # the first process's metrics are complete
    summaries = []
    for p, before in zip(progress, stages_before or [None] * len(progress)):
        summary = summarize(p.workdir, p.selection)
        best = summary["selected_epoch"]
        if p.checkpoints.best_epoch() != best:  # the invariant Checkpoints.save keeps
            raise RuntimeError(f"{p.workdir}: best/ holds epoch {p.checkpoints.best_epoch()}, "
                               f"the metrics name epoch {best}.")
        num_params = sum(x.size for x in jax.tree.leaves(p.state.params["student"]))
        summary.update(compile_seconds=p.compile_seconds, student_parameters=int(num_params),
                       best_checkpoint=f"best/{best}")
        if len(progress) > 1:
            summary["trained_together_with"] = [q.workdir for q in progress if q is not p]
        if before:
            summary["stages"] = before
        if distributed.is_primary():
            write_atomically(os.path.join(p.workdir, SUMMARY), json.dumps(summary, indent=2))
        summaries.append(summary)
    distributed.sync("vid_jax: summaries written")  # what a next run reads is written
    return [p.state for p in progress], summaries


def _train_epochs(progress: Sequence[_Progress], stage: methods.Stage | None, first: int,
                  last: int, num_epochs: int) -> None:
    """Epochs first..last of every run in `progress`, in one shared step; each epoch of each
    run is then evaluated, written and checkpointed as its config says."""
    if first > last:
        return
    lead = progress[0].run  # the runs share batches: any of them gives them
    sampler, shared = lead.sampler, len(progress) > 1
    step_fn = (shared_train_step([p.run for p in progress], stage) if shared
               else lead.train_step(stage))
    states = [p.state for p in progress]
    compile_seconds = step_fn.compile(tuple(states) if shared else states[0], lead.batch(0))
    for p in progress:
        p.compile_seconds = max(p.compile_seconds, compile_seconds)
    schedules = [p.run.optimizer(stage)[1] for p in progress]
    names = ", ".join(os.path.basename(p.workdir.rstrip("/")) for p in progress)
    # One reader for all the epochs: a streamed set keeps decoding ahead while an epoch ends.
    with contextlib.closing(lead.batches((first - 1) * sampler.steps_per_epoch,
                                         last * sampler.steps_per_epoch)) as batches:
        for epoch in range(first, last + 1):
            _train_epoch(progress, step_fn, batches, epoch, num_epochs, schedules, names)


def _train_epoch(progress: Sequence[_Progress], step_fn, batches: Iterator[Batch], epoch: int,
                 num_epochs: int, schedules: Sequence[Any], names: str) -> None:
    """One epoch of every run in `progress`, its batches taken from `batches`; then each run's
    epoch is evaluated, written and checkpointed (`_end_epoch`)."""
    lead, shared = progress[0].run, len(progress) > 1
    config, sampler = lead.config, lead.sampler
    states = [p.state for p in progress]
    t0 = time.perf_counter()
    sums = [MetricSums() for _ in progress]
    first_step = (epoch - 1) * sampler.steps_per_epoch
    at_start: list[dict[str, float]] = [{} for _ in progress]
    for step in tqdm(range(first_step, first_step + sampler.steps_per_epoch),
                     desc=f"epoch {epoch}/{num_epochs}" + (f" ({names})" if shared else ""),
                     leave=False, disable=not (config.get("progress_bar", True)
                                               and distributed.is_primary())):
        if shared:
            states, metrics = step_fn(tuple(states), next(batches))
        else:
            (states, metrics) = step_fn(states[0], next(batches))
            states, metrics = [states], [metrics]
        for i, m in enumerate(metrics):
            sums[i].add(m)
            if step == 0:  # the losses of the weights the stage starts from
                at_start[i] = {f"{k}_at_start": float(v)
                               for k, v in jax.device_get(m).items() if k.endswith("_loss")}
    seconds = time.perf_counter() - t0
    for i, p in enumerate(progress):
        p.state = states[i]
        _end_epoch(p, epoch, num_epochs, sums[i].result(), at_start[i], schedules[i], seconds)


def _end_epoch(p: _Progress, epoch: int, num_epochs: int, totals: dict[str, float],
               at_start: dict[str, float], schedule, seconds: float) -> None:
    """One run's epoch: its record, evaluation, metrics line, checkpoint and log line."""
    run, config, dataset = p.run, p.run.config, p.run.dataset
    steps = run.sampler.steps_per_epoch
    check_finite(totals, epoch, p.workdir)
    record = {k: float(v) / steps for k, v in totals.items()
              if k not in ("train_correct", "train_labelled")}
    record["train_accuracy"] = float(totals["train_correct"]) / max(
        float(totals["train_labelled"]), 1.0)
    record["learning_rate"] = float(schedule(int(p.state.step) - 1))
    # Images this run's step went through per second (of a shared step: the whole step's).
    record["images_per_sec"] = steps * config.batch_size / seconds
    if epoch == 1:
        record.update(at_start)
    variables = {"params": p.state.params["student"], "batch_stats": p.state.batch_stats}
    # Evaluating 10,000 test images can cost as much as an epoch on few training images:
    # `eval_every_epochs` thins it out; the last epoch is always evaluated.
    evaluated = epoch % config.get("eval_every_epochs", 1) == 0 or epoch == num_epochs
    if evaluated:
        eval_batch = config.get("eval_batch_size") or config.batch_size
        for split_name, split in (("test", dataset.test), ("validation", dataset.validation)):
            if split is not None:
                for k, v in evaluate(p.eval_step, variables, split, eval_batch,
                                     NamedSharding(run.mesh, P(AXIS)),
                                     data.read_threads(config.data)).items():
                    record[f"{split_name}_{k}"] = v
    p.start_writing(epoch)
    p.writer.write(epoch, record)
    # The best epoch is saved when it is evaluated, whatever the checkpoint interval, with a
    # checkpoint of its train state, so that a resume always reaches it (Checkpoints.save).
    if p.selection == "last":
        accuracy = record["test_accuracy"] if epoch == num_epochs else None
        new_best = accuracy is not None
    else:
        accuracy = record.get(f"{p.selection}_accuracy")
        new_best = accuracy is not None and (p.best_accuracy is None
                                             or accuracy > p.best_accuracy)
    if new_best:
        p.best_accuracy = accuracy
    if new_best or epoch % config.checkpoint_every_epochs == 0 or epoch == num_epochs:
        p.checkpoints.save(epoch, p.state, variables if new_best else None, accuracy)
    if config.get("log_epochs", True) and distributed.is_primary():
        test = f"  test_acc {record['test_accuracy']:.4f}" if evaluated else ""
        print(f"epoch {epoch:4d}  loss {record['loss']:.4f}  train_acc "
              f"{record['train_accuracy']:.4f}{test}  "
              f"{record['images_per_sec']:.0f} img/s", flush=True)
