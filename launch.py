"""Runs one config: a teacher, a student, a distillation run or a pipeline of them.

  python launch.py --config=configs/cifar100_wrn16_2.py --workdir=workdirs/vid
  python launch.py --config=configs/quickstart.py --config.jobs.student_vid_i.distill.vid_i.weight=2

Running the same command again resumes from the workdir's latest checkpoint.
"""
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow is only TFDS's reader here
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from vid_jax import host  # noqa: E402  (imports no JAX)

host.use_all_cpu_cores()  # before JAX starts: one XLA CPU device per core

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from vid_jax import data, pipeline, train  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "A config file: configs/<name>.py.")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where checkpoints, metrics and summary.json go (default workdirs/<config>).")
_DEBUG = flags.DEFINE_bool(
    "debug", False, "Show library INFO logs and the full traceback of configuration errors.")
flags.mark_flags_as_required(["config"])

# Errors that mean the input is wrong, not the code: shown as one message, no traceback.
USER_ERRORS = (ValueError, FileNotFoundError, data.DatasetUnavailableError,
               train.TrainingDiverged)


def main(argv):
    del argv
    if not _DEBUG.value:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    config = _CONFIG.value
    name = os.path.splitext(os.path.basename(config_flags.get_config_filename(
        flags.FLAGS["config"])))[0]
    workdir = _WORKDIR.value or os.path.join("workdirs", name)
    try:
        if "jobs" in config:
            summaries = pipeline.run_jobs(config, workdir)
            print()
            print(pipeline.accuracy_table(summaries, dict(config.get("descriptions") or {})))
        else:
            summary = train.train_and_evaluate(config, workdir)
            print(json.dumps(summary, indent=2))
    except USER_ERRORS as e:
        if _DEBUG.value:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
