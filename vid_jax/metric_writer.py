"""Per-epoch metrics: JSON lines (for scripts) and TensorBoard event files (for people).

Both are written in the training process's own thread, so a failed write (a full disk) stops
the run with its error instead of being lost in a background thread.
"""
import json
import os
import time
from typing import Any

from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto import event_pb2
from tensorboardX.summary import scalar


class MetricsFileError(ValueError):
    """metrics.jsonl cannot be read: the message names the file and the line."""


class MetricWriter:
    FILENAME = "metrics.jsonl"

    def __init__(self, workdir: str, resume_epoch: int = 0):
        self.path = os.path.join(workdir, self.FILENAME)
        self._truncate_after(resume_epoch)
        # tensorboardX's SummaryWriter writes from a thread that drops its errors; its
        # EventsWriter, used here directly, writes (and fails) in this one.
        directory = os.path.join(workdir, "tensorboard")
        os.makedirs(directory, exist_ok=True)
        self.tensorboard = EventsWriter(os.path.join(directory, "events"))

    def _truncate_after(self, epoch: int) -> None:
        # Epochs after the restored checkpoint will run again; keep no line for them twice.
        # A last line cut by a crash (no newline, not JSON) is one of them: it goes too.
        if not os.path.exists(self.path):
            return
        kept = [line for line in read_metrics(self.path, drop_cut_last_line=True)
                if line["epoch"] <= epoch]
        write_atomically(self.path, "".join(json.dumps(line) + "\n" for line in kept))

    def write(self, epoch: int, metrics: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"epoch": epoch, **metrics}) + "\n")
        now = time.time()
        for key, value in metrics.items():
            self.tensorboard.write_event(event_pb2.Event(
                wall_time=now, step=epoch, summary=scalar(key, float(value))))
        self.tensorboard.flush()

    def close(self) -> None:
        self.tensorboard.close()


class NoMetricWriter:
    """A MetricWriter that writes nothing: that of the processes of a job other than the
    first, which writes the job's metrics once (`vid_jax.distributed`)."""

    def write(self, epoch: int, metrics: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def read_metrics(path: str, drop_cut_last_line: bool = False) -> list[dict[str, Any]]:
    """The lines of a metrics.jsonl. A last line that a crash cut short (no newline at the end
    and not JSON) is dropped when `drop_cut_last_line` (a resume, which trains that epoch
    again), otherwise refused, as is any other line that is not JSON: a MetricsFileError that
    names the file and the line."""
    with open(path) as f:
        text = f.read()
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            cut = number == len(lines)  # the text does not end with a newline
            if cut and drop_cut_last_line:
                continue
            how = ("a crash cut the last line: rerun the same command to resume (it drops "
                   "the line)" if cut else "the file is damaged: restore it or start over with "
                   "--restart")
            raise MetricsFileError(f"{path}, line {number}: not JSON ({error.msg}); {how}."
                                   ) from None
    return records


def write_atomically(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
