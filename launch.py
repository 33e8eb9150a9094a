"""Runs a config: one run, a pipeline of runs (a teacher, then students), or a grid of the paper.

  python launch.py --config=configs/cifar100_wrn16_2.py --workdir=workdirs/vid
  python launch.py --config=configs/quickstart.py --config.jobs.student_vid_i.distill.vid_i.weight=2
  python launch.py --config=configs/cifar10_table1.py --config.columns=M=100 --config.seeds=0,1
  python launch.py --config=configs/cifar10_table1.py --list    # the runs, without training

Any field can be overridden with --config.a.b=v. Running the same command again reads the runs
that finished, and resumes an interrupted one from its latest checkpoint (vid_jax/runner.py).
A workdir that trained under another config is refused with the fields that differ, unless
--allow_change=FIELD,... (resume under the new values, recorded) or --restart (start over);
one process at a time trains in a workdir (vid_jax/workdir.py).

Several hosts (vid_jax/distributed.py): run the same command in every process, with
--distributed where JAX finds the job in the environment (Cloud TPU pods, SLURM, Open MPI),
or with the job's shape given (flags, or the environment variables JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID):

  python launch.py --config=... --coordinator_address=host0:1234 --num_processes=2 --process_id=0
  python launch.py --config=... --coordinator_address=host0:1234 --num_processes=2 --process_id=1

The mesh spans every process's devices; each process loads only its part of each batch, the
first writes the workdir's files, all save and restore the checkpoints (the workdir must be
on a file system they share). Processes other than the first print only errors. If a
process dies, the others stop: on CPUs with one line at their next all-reduce; elsewhere JAX
stops them after --heartbeat_timeout_seconds. The same command in every process then resumes
from the last checkpoint.
"""
import os
import shlex
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow is only TFDS's reader here
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from vid_jax import host  # noqa: E402  (imports no JAX)

host.use_all_cpu_cores()  # before JAX starts: one XLA CPU device per core

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from vid_jax import distributed, runner  # noqa: E402
from vid_jax.errors import user_error  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "A config file: configs/<name>.py.")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where the runs write checkpoints, metrics and summary.json (default "
    "workdirs/<config>; a grid's: workdirs/experiments/<grid>_<scale>).")
_LIST = flags.DEFINE_bool("list", False, "Print the config's runs and their workdirs; train "
                          "nothing.")
_RESTART = flags.DEFINE_bool(
    "restart", False, "Start over every run whose workdir trained under another config (its "
    "checkpoints, metrics and summary are deleted); the other runs resume or are read.")
_ALLOW_CHANGE = flags.DEFINE_list(
    "allow_change", [], "Fields (or their parents, e.g. optimizer) that may differ from the "
    "config a workdir trained with: the run resumes under the new values (a finished one "
    "trains again), and config_changes.jsonl records each change with its first epoch.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Join the other processes of this job, as JAX finds them in the "
    "environment (Cloud TPU pods, SLURM, Open MPI); implied by the next three flags or their "
    f"environment variables ({distributed.ENV_COORDINATOR}, {distributed.ENV_NUM_PROCESSES}, "
    f"{distributed.ENV_PROCESS_ID}).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, where the job's processes meet.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "How many processes the job has.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0..N-1.")
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout_seconds", None, "Of a job of several processes: how long one may stop "
    "answering before the others stop with an error (default: JAX's).")
_DEBUG = flags.DEFINE_bool(
    "debug", False, "Show library INFO logs and the full traceback of configuration errors.")
flags.mark_flags_as_required(["config"])

def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _fail_now(message: str) -> None:
    """`_fail` for an error during training: the workdir's files are closed by then, and
    exiting at once keeps orbax's unfinished writes (a full disk) from printing hundreds of
    'Event loop is closed' lines while the interpreter shuts down."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(2)


def _unquoted(text: str) -> str:
    """`'x'` -> `x`: str() of a KeyError (or of config_flags' AttributeError) quotes it."""
    text = text.strip()
    return text[1:-1] if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"" else text


def _flag_error(error: Exception, argv: list[str]) -> str:
    """One line for a command line that config_flags could not apply."""
    text = _unquoted(str(error))
    if "Error whilst parsing config file" in text:  # get_config raised: its last line says why
        text = text.splitlines()[-1].split(": ", 1)[-1]
    elif "Attempted [Relative path]:" in text:  # the file is missing
        path, _, why = " ".join(text.split("Attempted [Relative path]:", 1)[1].split()
                                ).partition(" ")
        text = f"--config={path}: {why}"
    elif isinstance(error, (AttributeError, KeyError)):  # an override of a field it lacks
        field, _, hint = text.partition("\\n")
        field = _unquoted(field.replace("\\'", "'"))
        given = [a for a in argv if a.startswith("--config.")
                 and field in a.split("=", 1)[0].split(".")]
        text = (f"{given[0] if given else '--config'}: the config has no field {field!r}"
                + (f" ({hint.strip().replace('Did you', 'did you')})" if hint else "") + ".")
    elif not isinstance(error, (flags.Error, ValueError, TypeError, OSError)):
        text = f"{type(error).__name__}: {text}"  # e.g. the config file failed to import
    return " ".join(text.split())


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except Exception as error:  # a bad config file or override: one line
        if "--debug" in argv:
            raise
        _fail(_flag_error(error, argv))


def _join_processes() -> None:
    """Joins the job's other processes (vid_jax.distributed), before anything uses JAX."""
    try:
        joined = distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value,
                                        _PROCESS_ID.value, auto=_DISTRIBUTED.value,
                                        heartbeat_timeout_seconds=_HEARTBEAT.value)
    except (ValueError, RuntimeError) as error:  # a bad value, or the job not found or met
        if _DEBUG.value:
            raise
        _fail_now(f"could not join the job's processes: {' '.join(str(error).split())}")
    if joined and not distributed.is_primary():
        sys.stdout = open(os.devnull, "w")  # the first process reports; errors still show


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]}; fields are set with --config.a.b=v.")
    if not _DEBUG.value:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    _join_processes()
    config = _CONFIG.value
    try:
        runner.kind(config)
    except OSError as error:  # config_flags defers a missing file's error to the first use
        _fail(_flag_error(error, argv))
    name = os.path.splitext(os.path.basename(config_flags.get_config_filename(
        flags.FLAGS["config"])))[0]
    workdir = _WORKDIR.value or runner.default_workdir(config, name)
    try:
        runs = runner.expand(config, workdir)
        runner.check_overrides(config, config_flags.get_override_values(flags.FLAGS["config"]),
                               runs)
        if _LIST.value:
            print(runner.describe(runs))
            return
        command = "python launch.py " + shlex.join(sys.argv[1:])
        outcome = runner.run(config, workdir, command, runs=runs,
                             allow_changes=_ALLOW_CHANGE.value, restart=_RESTART.value)
    except Exception as e:
        line = None if _DEBUG.value else user_error(e)
        if line is None:
            raise
        _fail_now(line)
    print()
    print(outcome.text)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
