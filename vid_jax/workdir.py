"""A run's workdir as a record to trust: one process at a time, and no config drift mixed in.

A workdir that has trained (it holds a checkpoint or a summary) belongs to the config in its
`config.json`. Running it again with another config is refused with the fields that differ,
unless the user asks for it:

- some fields change nothing a run computes and may always differ (`FREE_FIELDS`);
- others may change on resume when the user names them (`--allow_change=FIELD,...`): the
  schedule, the optimizer, the number of epochs, a term's weight or temperature...; each change
  is appended to `config_changes.jsonl` with the epoch it took effect from;
- what fixes the data a run sees, its models or its terms cannot change on resume
  (`FIXED_FIELDS`): start over (`--restart`) or use another workdir.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import ml_collections

from vid_jax import distributed
from vid_jax.config_base import base_config

CONFIG = "config.json"
CHANGES = "config_changes.jsonl"
SUMMARY = "summary.json"
LOCK = ".lock"
# What a run writes in its workdir: `clear_outputs` removes these and nothing else.
OUTPUTS = ("checkpoints", "best", "stages", "tensorboard", "metrics.jsonl", SUMMARY, CONFIG,
           CHANGES)

# Fields that do not change what a run computes: they may differ on any rerun.
FREE_FIELDS = ("progress_bar", "log_epochs", "eval_batch_size", "eval_every_epochs",
               "checkpoint_every_epochs", "data.data_dir", "data.download", "data.read_threads")
# Fields that a config may leave None for the run to compute (from the training images); the
# saved config holds the computed value.
DERIVED_FIELDS = ("data.mean", "data.std")
# Fields that fix the images a run sees, its models, its terms and their variables: a run
# cannot resume under other values (its checkpoints and batches would not fit them).
FIXED_FIELDS = ("seed", "batch_size", "model", "teacher", "data", "stage_epochs", "init_from",
                "distill.*.method", "distill.*.layers", "distill.*.mean_network",
                "distill.*.variance")


class WorkdirError(ValueError):
    """The workdir cannot be used as asked: the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class Change:
    field: str
    was: Any
    now: Any

    def __str__(self) -> str:
        return f"{self.field}: {_shown(self.was)} -> {_shown(self.now)}"


_ABSENT = object()


def _shown(value: Any) -> str:
    return "(absent)" if value is _ABSENT else json.dumps(value)


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flat(value, path + "."))
        else:
            out[path] = value
    return out


def _as_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
    return json.loads(config.to_json_best_effort())


def _matches(field: str, pattern: str) -> bool:
    """`optimizer` matches optimizer.*; `distill.*.layers` matches distill.vid_i.layers."""
    parts, wanted = field.split("."), pattern.split(".")
    if len(parts) < len(wanted):
        return False
    return all(w in ("*", p) for w, p in zip(wanted, parts))


def _term_set_changed(field: str, was: Any, now: Any) -> bool:
    # Adding or removing a term adds or removes variables in the train state.
    return field.startswith("distill.") and (was is _ABSENT or now is _ABSENT)


def saved_config(workdir: str) -> dict[str, Any] | None:
    path = os.path.join(workdir, CONFIG)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as error:
        raise WorkdirError(f"{path} is not valid JSON ({error}); the workdir is damaged: "
                           "restore the file or start over with --restart.") from None


def has_trained(workdir: str) -> bool:
    """Whether the workdir holds a run's results to keep (a checkpoint or a summary)."""
    return os.path.exists(os.path.join(workdir, SUMMARY)) or any(
        os.path.isdir(os.path.join(workdir, d)) and any(
            name.isdigit() for name in os.listdir(os.path.join(workdir, d)))
        for d in ("checkpoints", "best"))


def config_changes(workdir: str, config: ml_collections.ConfigDict) -> list[Change]:
    """The fields in which `config` differs from the config the workdir trained with (none
    when it has not trained), FREE_FIELDS left out."""
    saved = saved_config(workdir)
    if saved is None or not has_trained(workdir):
        return []
    was, now = _flat(saved), _flat(_as_json(config))
    # A field that a newer vid-jax added reads as its default in a workdir written before it.
    defaults = _flat(_as_json(base_config()))
    changes = []
    for field in sorted(set(was) | set(now)):
        before, after = was.get(field, _ABSENT), now.get(field, _ABSENT)
        if before is _ABSENT and after in (None, defaults.get(field)):
            continue
        if after is None and any(_matches(field, f) for f in DERIVED_FIELDS):
            continue
        if before != after and not any(_matches(field, f) for f in FREE_FIELDS):
            changes.append(Change(field, before, after))
    return changes


def check_resume(workdir: str, config: ml_collections.ConfigDict,
                 allow_changes: Sequence[str] = ()) -> list[Change]:
    """The changes a rerun of `workdir` with `config` makes, or a WorkdirError naming the
    fields that differ when they are not allowed (`allow_changes`: fields or their parents)."""
    changes = config_changes(workdir, config)
    fixed = [c for c in changes if any(_matches(c.field, f) for f in FIXED_FIELDS)
             or _term_set_changed(c.field, c.was, c.now)]
    refused = [c for c in changes if c in fixed
               or not any(_matches(c.field, a) for a in allow_changes)]
    if not refused:
        return changes
    shown = "; ".join(str(c) for c in refused[:6]) + (
        f" (and {len(refused) - 6} more)" if len(refused) > 6 else "")
    if fixed:
        how = ("these fields cannot change in a run that has trained: start over with "
               "--restart, or use another --workdir")
    else:
        fields = ",".join(sorted({c.field for c in refused}))
        how = (f"resume under the new values with --allow_change={fields} (Python: "
               "allow_changes=...), start over with --restart, or use another --workdir")
    raise WorkdirError(f"{workdir} trained with another config ({shown}): {how}.")


def record_changes(workdir: str, changes: Sequence[Change], epoch: int) -> None:
    """Appends each change with the first epoch it applies to."""
    if changes:
        with open(os.path.join(workdir, CHANGES), "a") as f:
            for c in changes:
                f.write(json.dumps({"from_epoch": epoch, "field": c.field,
                                    "was": None if c.was is _ABSENT else c.was,
                                    "now": None if c.now is _ABSENT else c.now}) + "\n")


def clear_outputs(workdir: str) -> None:
    """Removes what a run wrote in `workdir` (OUTPUTS), so it trains from the start."""
    for name in OUTPUTS:
        path = os.path.join(workdir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


def check_writable(workdir: str) -> None:
    """A WorkdirError if `workdir` cannot be created or written (checked before writing)."""
    path = os.path.abspath(workdir)
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise WorkdirError(f"workdir {workdir}: {existing} is a file, not a directory; choose "
                           "another --workdir.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise WorkdirError(f"workdir {workdir}: {existing} is not writable; choose another "
                           "--workdir or fix its permissions.")


def _lock_path(workdir: str) -> str:
    """This process's lock: `.lock`, or `.lock.<i>` for process i > 0 of a job of several
    (`vid_jax.distributed`), so that the processes of one job do not refuse each other and
    a second job's process i meets the first job's."""
    index = distributed.process_index()
    return os.path.join(workdir, LOCK if index == 0 else f"{LOCK}.{index}")


def check_not_in_use(workdir: str) -> None:
    """A WorkdirError if another process holds `workdir`'s lock now (checked before a
    command trains anything; `locked` is what keeps it while training)."""
    if os.path.exists(_lock_path(workdir)):
        with locked(workdir):
            pass


@contextlib.contextmanager
def locked(workdir: str) -> Iterator[None]:
    """Holds `workdir`'s lock, so that a second process refuses to train in it.

    An advisory `flock` on `workdir/.lock` (`.lock.<i>` in process i of a job of several):
    the kernel releases it when the process ends, so a killed run leaves no stale lock
    behind. On a shared file system (NFS), flock is as good as that system's locks.
    """
    os.makedirs(workdir, exist_ok=True)
    handle = open(_lock_path(workdir), "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise WorkdirError(f"{workdir} is in use by {holder}: wait for it to finish (the "
                               "same command then resumes or reads it) or use another "
                               "--workdir.") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {os.uname().nodename}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock
