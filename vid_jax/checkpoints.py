"""Orbax checkpoints in a run's workdir.

  workdir/checkpoints/<epoch>  the whole train state, for resuming (the newest few are kept)
  workdir/best/<epoch>         the model variables {params, batch_stats} of the best epoch;
                               this is what a distillation run loads as its teacher
"""
import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpoints:
    def __init__(self, workdir: str, keep: int = 2, best_metric: str = "accuracy"):
        workdir = os.path.abspath(workdir)
        sync = dict(enable_async_checkpointing=False)  # a save is complete when it returns
        self.latest = ocp.CheckpointManager(
            os.path.join(workdir, "checkpoints"),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, **sync))
        self.best = ocp.CheckpointManager(
            os.path.join(workdir, "best"),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1, create=True, best_fn=lambda m: m[best_metric], best_mode="max",
                **sync))

    def restore_latest(self, abstract_state: Any) -> tuple[Any, int] | None:
        """(state, epoch) of the newest saved epoch, or None if nothing is saved yet."""
        epoch = self.latest.latest_step()
        if epoch is None:
            return None
        state = self.latest.restore(epoch, args=ocp.args.StandardRestore(abstract_state))
        return state, epoch

    def save(self, epoch: int, state: Any, variables: Any, metrics: dict[str, float]) -> None:
        self.latest.save(epoch, args=ocp.args.StandardSave(state))
        self.best.save(epoch, args=ocp.args.StandardSave(variables), metrics=metrics)

    def close(self) -> None:
        self.latest.close()
        self.best.close()


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
        epoch = manager.best_step() if which == "best" else manager.latest_step()
        if epoch is None:
            raise FileNotFoundError(f"{directory} holds no finished checkpoint; the run that "
                                    "writes it was interrupted before its first save.")
        # Restore onto one local device whatever mesh saved it (a teacher trained on 2 XLA
        # devices loads in a 1-device process): orbax refuses a different topology otherwise.
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                              dict(manager.item_metadata(epoch)))
        return manager.restore(epoch, args=ocp.args.StandardRestore(target))
