"""Which errors a user fixes (one line) and which are failures of the code (a traceback)."""
import errno
import os
import sys
import traceback

from vid_jax.data.types import DatasetUnavailableError
from vid_jax.metric_writer import MetricsFileError
from vid_jax.workdir import WorkdirError

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Code whose deliberate ValueError / FileNotFoundError says what input to fix.
_OWN_CODE = tuple(os.path.join(_ROOT, d) + os.sep for d in ("vid_jax", "configs")) + (
    os.path.join(_ROOT, "launch.py"),)
# Failures of the machine, not of the code: one line and what to do.
_ENVIRONMENT = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
                errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied"}


def user_error(error: BaseException) -> str | None:
    """The one line to show for an error that the input or the machine caused, or None for an
    internal failure (which keeps its traceback).

    The input's errors are the ones vid-jax and the configs raise on purpose: their own types
    (a workdir in use or trained under another config, a damaged metrics file, a diverged run,
    a data set not prepared) and any ValueError or FileNotFoundError raised in their code; the
    same types raised inside a library (orbax, numpy) are failures, shown in full. A full disk
    or a read-only file system is the machine's: one line, whoever raised it, as is a
    collective that failed in a job of several processes (another process stopped).
    """
    lost = _lost_peer(error)
    if lost:
        return lost
    if isinstance(error, (WorkdirError, MetricsFileError, DatasetUnavailableError,
                          FloatingPointError)):  # FloatingPointError: TrainingDiverged
        return str(error)
    code = error.errno if isinstance(error, OSError) else None
    # Orbax's writers (tensorstore) report an OS error as a ValueError that ends with its code.
    code = code or next((c for c in _ENVIRONMENT if f"[os_error_code='{c}']" in str(error)),
                        None)
    if code in _ENVIRONMENT:
        where = f" ({error.filename})" if getattr(error, "filename", None) else ""
        return (f"{_ENVIRONMENT[code]}{where}: fix that, then run the same command again; it "
                "resumes from the last checkpoint.")
    if isinstance(error, (ValueError, FileNotFoundError)):
        frames = traceback.extract_tb(error.__traceback__)
        if frames and os.path.abspath(frames[-1].filename).startswith(_OWN_CODE):
            return str(error)
    return None


def _lost_peer(error: BaseException) -> str | None:
    """One line for a step that failed across processes (`vid_jax.distributed`): on CPUs, a
    peer that died closes its connections and the next all-reduce fails with this error."""
    jax = sys.modules.get("jax")
    if jax is None or not isinstance(error, jax.errors.JaxRuntimeError) \
            or jax.process_count() < 2:
        return None
    what = " ".join(str(error).strip().splitlines()[0].split())
    return (f"process {jax.process_index()} of {jax.process_count()}: a step across processes "
            f"failed ({what}); another process of the job has stopped (its output may say "
            "why). Once every process can run, start the same command in each: it resumes "
            "from the last checkpoint.")
