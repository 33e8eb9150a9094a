"""Orbax checkpoints in a run's workdir.

  workdir/checkpoints/<epoch>  the whole train state, for resuming (the newest few are kept)
  workdir/best/<epoch>         the model variables {params, batch_stats} of the best epoch;
                               this is what a distillation run loads as its teacher

The epoch a run exports (the best validation accuracy, or the last epoch of a run without a
validation split: nothing is chosen on the test set) is saved when it is evaluated, whatever
the checkpoint interval: its train state to `checkpoints/`, then its variables to `best/`
(`Checkpoints.save`). So the latest checkpoint is never older than the best epoch, and a
process killed between the two saves resumes from that epoch, whose variables
`reconcile_best` then writes to `best/`. Orbax writes each save to a temporary directory and
renames it when complete; the temporary directories of a killed save are removed when the
workdir is opened again (`cleanup_tmp_directories`).

In a job of several processes (`vid_jax.distributed`), every process opens the managers and
calls every save and restore, as orbax requires (each array's shards are written once, the
metadata by the first process); `load_variables` (a teacher, a student's start) restores in
every process, onto that process's first device.
"""
import errno
import hashlib
import json
import os
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp

from vid_jax.workdir import SUMMARY, WorkdirError


class Checkpoints:
    def __init__(self, workdir: str, keep: int = 2, best_metric: str = "accuracy"):
        workdir = os.path.abspath(workdir)
        # A save is complete when it returns; a killed save's temporary files go on reopening.
        common = dict(enable_async_checkpointing=False, create=True,
                      cleanup_tmp_directories=True)
        self.latest = ocp.CheckpointManager(
            os.path.join(workdir, "checkpoints"),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, **common))
        # The loop saves an epoch here only when it is the run's new choice (Summary's
        # `selected_epoch`), so keeping the newest one keeps the choice.
        self.best = ocp.CheckpointManager(os.path.join(workdir, "best"),
                                          options=ocp.CheckpointManagerOptions(max_to_keep=1,
                                                                               **common))
        self.best_metric = best_metric

    def restore_latest(self, like: Any) -> tuple[Any, int] | None:
        """(state, epoch) of the newest saved epoch, or None if nothing is saved yet. The state
        is restored with the shapes, types and shardings of `like` (placed on a mesh); every
        process of a job calls this, each restoring its own shards."""
        epoch = self.latest.latest_step()
        if epoch is None:
            return None
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like)
        state = self.latest.restore(epoch, args=ocp.args.StandardRestore(abstract))
        return state, epoch

    def save(self, epoch: int, state: Any, variables: Any | None = None,
             accuracy: float | None = None) -> None:
        """Saves the train state of `epoch`, then its variables as the new best epoch when
        `variables` are given (with the `accuracy` that ranks them)."""
        if epoch not in self.latest.all_steps():
            _check_free_space(self.latest.directory, state, epoch)
            self.latest.save(epoch, args=ocp.args.StandardSave(state))
        if variables is not None:
            self.save_best(epoch, variables, accuracy)

    def save_best(self, epoch: int, variables: Any, accuracy: float) -> None:
        if epoch not in self.best.all_steps():
            _check_free_space(self.best.directory, variables, epoch)
            self.best.save(epoch, args=ocp.args.StandardSave(variables),
                           metrics={self.best_metric: float(accuracy)})

    def best_epoch(self) -> int | None:
        return self.best.latest_step()

    def reconcile_best(self, best_epoch: int | None, best_accuracy: float | None,
                       resumed_epoch: int, variables: Any) -> None:
        """Makes `best/` hold `best_epoch` (the best of the epochs up to `resumed_epoch` by the
        run's metrics) after a resume from `resumed_epoch`, whose `variables` are given.

        Writes the resumed epoch when a kill came after its train state and before its best
        save; drops a best epoch after the resumed one (it trains again; only a workdir of an
        older vid-jax has one). Any other disagreement means a workdir written otherwise: a
        WorkdirError.
        """
        for epoch in self.best.all_steps():
            if epoch > resumed_epoch:
                self.best.delete(epoch)
        self.best.reload()
        if best_epoch is None or self.best_epoch() == best_epoch:
            return
        if best_epoch == resumed_epoch:
            self.best.save(best_epoch, args=ocp.args.StandardSave(variables),
                           metrics={self.best_metric: float(best_accuracy)})
            self.best.reload()
            return
        raise WorkdirError(
            f"{self.best.directory} holds epoch {self.best_epoch()} but the run's metrics name "
            f"epoch {best_epoch} best, and its variables are no longer saved (a workdir "
            "written by a vid-jax that chose the best only at checkpoints): start over with "
            "--restart, or use another --workdir.")

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def _check_free_space(directory: Any, tree: Any, epoch: int) -> None:
    """An OSError(ENOSPC) before a save that cannot fit: orbax's writers report a full disk
    from many threads at once (hundreds of lines), and leave a partial save behind."""
    needed = sum(getattr(x, "nbytes", 0) for x in jax.tree.leaves(tree)) + (1 << 20)
    free = shutil.disk_usage(str(directory)).free
    if free < needed:
        raise OSError(errno.ENOSPC, f"No space left for the checkpoint of epoch {epoch} "
                      f"({needed / 1e6:.1f} MB needed, {free / 1e6:.1f} MB free)",
                      str(directory))


def checkpoint_directory(workdir: str, which: str = "best") -> str:
    """`workdir/which`, or a FileNotFoundError that says how to make it."""
    directory = os.path.join(os.path.abspath(workdir), which)
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"No checkpoint at {directory}: train that model first (python launch.py "
            f"--config=<its config> --workdir={workdir}), or fix config.teacher.workdir.")
    return directory


def load_variables(workdir: str, which: str = "best") -> dict[str, Any]:
    """Loads the model variables {params, batch_stats} a run saved (its best epoch by default);
    `which="checkpoints"` loads the whole train state of the latest epoch instead."""
    directory = checkpoint_directory(workdir, which)
    with ocp.CheckpointManager(directory, item_handlers=ocp.StandardCheckpointHandler()) as manager:
        epoch = manager.latest_step()  # best/ keeps one epoch: the run's choice
        if epoch is None:
            raise FileNotFoundError(f"{directory} holds no finished checkpoint; the run that "
                                    "writes it was interrupted before its first save.")
        if which == "best":
            _check_best_is_the_summarys(workdir, epoch)
            verify_checksums(workdir, os.path.join(which, str(epoch)))
        # Restore onto one local device whatever mesh saved it (a teacher trained on 2 XLA
        # devices loads in a 1-device process; each process of a job loads its own copy):
        # orbax refuses a different topology otherwise.
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                              dict(manager.item_metadata(epoch)))
        return manager.restore(epoch, args=ocp.args.StandardRestore(target))


def _check_best_is_the_summarys(workdir: str, epoch: int) -> None:
    """A finished run's `best/` must hold the epoch its summary names."""
    path = os.path.join(workdir, SUMMARY)
    if not os.path.exists(path):
        return  # a run still training: best/ is its best epoch so far
    with open(path) as f:
        summary = json.load(f)
    named = summary.get("selected_epoch",
                        summary.get(f"best_{summary.get('selected_by', 'test')}_epoch"))
    if named is not None and named != epoch:
        raise WorkdirError(
            f"{workdir}: summary.json names epoch {named} best but best/ holds epoch {epoch}; "
            "the teacher it exports is not the one its summary describes. Retrain it (python "
            f"launch.py --config=<its config> --workdir={workdir} --restart).")


def verify_checksums(workdir: str, under: str) -> None:
    """Checks the files under `workdir/under` that `workdir/SHA256SUMS` lists (a committed
    teacher's), if it has one; a WorkdirError names the first file that differs."""
    sums = os.path.join(workdir, "SHA256SUMS")
    if not os.path.exists(sums):
        return
    with open(sums) as f:
        listed = [line.split(maxsplit=1) for line in f if line.strip()]
    prefix = under.rstrip("/") + "/"
    for digest, name in listed:
        name = name.strip().lstrip("*")
        if not name.startswith(prefix):
            continue
        path = os.path.join(workdir, name)
        if not os.path.exists(path):
            raise WorkdirError(f"{path} is missing; {sums} lists it. Restore the checkpoint "
                               "(git checkout or git lfs pull).")
        digest_of_file = hashlib.sha256()
        with open(path, "rb") as g:
            for chunk in iter(lambda: g.read(1 << 20), b""):
                digest_of_file.update(chunk)
        actual = digest_of_file.hexdigest()
        if actual != digest:
            raise WorkdirError(f"{path} does not match its checksum in {sums} (sha256 "
                               f"{actual[:12]}..., expected {digest[:12]}...): the checkpoint "
                               "is damaged or was replaced. Restore it or retrain the teacher.")
