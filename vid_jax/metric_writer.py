"""Per-epoch metrics: JSON lines (for scripts) and TensorBoard event files (for people)."""
import json
import os
from typing import Any

from tensorboardX import SummaryWriter


class MetricWriter:
    FILENAME = "metrics.jsonl"

    def __init__(self, workdir: str, resume_epoch: int = 0):
        self.path = os.path.join(workdir, self.FILENAME)
        self._truncate_after(resume_epoch)
        self.tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def _truncate_after(self, epoch: int) -> None:
        # Epochs after the restored checkpoint will run again; keep no line for them twice.
        if not os.path.exists(self.path):
            return
        kept = [line for line in read_metrics(self.path) if line["epoch"] <= epoch]
        write_atomically(self.path, "".join(json.dumps(line) + "\n" for line in kept))

    def write(self, epoch: int, metrics: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"epoch": epoch, **metrics}) + "\n")
        for key, value in metrics.items():
            self.tensorboard.add_scalar(key, value, epoch)
        self.tensorboard.flush()

    def close(self) -> None:
        self.tensorboard.close()


def read_metrics(path: str) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_atomically(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
