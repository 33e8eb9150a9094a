"""Several processes, one run (vid_jax/distributed.py): two CPU processes on localhost, each
with one device, train as one process with two devices does, write the workdir's files once,
and stop with one line when the other dies; the same command then resumes."""
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from vid_jax import distributed, training
from vid_jax.checkpoints import Checkpoints, load_variables
from vid_jax.metric_writer import read_metrics
from vid_jax.models import build_model
from vid_jax.training import mesh as mesh_module
from vid_jax.training.mesh import check_batch, make_mesh, process_rows, shard_rows

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from test_train import tiny_config, tiny_dataset  # noqa: E402

EPOCHS = 3
# Small MLPs keep the compiles short (four jobs of two processes on two cores); the student's
# batch norm averages its statistics across the processes.
STUDENT = dict(name="mlp", hidden_sizes=(32,), batch_norm=True)
TEACHER = dict(name="mlp", hidden_sizes=(16,))

CONFIG_FILE = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from test_distributed import job_config

    def get_config():
        return job_config({teacher!r}, {data!r})
""")

# launch.py, in a process that SIGKILLs itself once epoch DIE_AFTER_EPOCH is checkpointed
# when it is process DIE_PROCESS of the job.
LAUNCH_SCRIPT = textwrap.dedent("""
    import os, runpy, signal, sys
    import jax
    from vid_jax import checkpoints

    die_after = int(os.environ.get("DIE_AFTER_EPOCH", "0"))
    save = checkpoints.Checkpoints.save

    def save_then_die(self, epoch, *args, **kwargs):
        save(self, epoch, *args, **kwargs)
        if epoch == die_after and jax.process_index() == int(os.environ["DIE_PROCESS"]):
            os.kill(os.getpid(), signal.SIGKILL)

    checkpoints.Checkpoints.save = save_then_die
    sys.argv = [{launch!r}, *sys.argv[1:]]
    runpy.run_path({launch!r}, run_name="__main__")
""")


def job_config(teacher_workdir: str, data_path: str):
    """The tiny run, distilling (KD) from a teacher that every process loads."""
    config = tiny_config(num_epochs=EPOCHS, checkpoint_every_epochs=1)
    config.model = dict(STUDENT)
    config.data.source, config.data.path = "arrays", data_path
    config.teacher.model = dict(TEACHER)
    config.teacher.workdir = teacher_workdir
    config.distill.kd = dict(weight=0.5, temperature=4.0)
    return config


def without_timing(lines):
    return [{k: v for k, v in line.items() if k != "images_per_sec"} for line in lines]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch_job(script, workdir, config_file, env, die_after_epoch=0, by_environment=False):
    """The same command in two processes of one device each, the job given by flags or by
    the environment (process 1 kills itself once epoch `die_after_epoch` is checkpointed);
    returns their (returncode, stdout, stderr)."""
    port = _free_port()
    env = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=1",
               DIE_AFTER_EPOCH=str(die_after_epoch), DIE_PROCESS="1")
    processes = []
    for i in range(2):
        job = dict(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
                   JAX_PROCESS_ID=str(i))
        flags = [] if by_environment else [f"--{k[4:].lower()}={v}" for k, v in job.items()]
        processes.append(subprocess.Popen(
            [sys.executable, str(script), f"--config={config_file}", f"--workdir={workdir}",
             *flags, "--heartbeat_timeout_seconds=20"],
            env={**env, **job} if by_environment else env, cwd=ROOT, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True))
    results = []
    for process in processes:
        try:
            out, err = process.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for p in processes:
                p.kill()
            pytest.fail("a process of the job hung (it should stop when its peer dies)")
        results.append((process.returncode, out, err))
    return results


@pytest.fixture(scope="module")
def job_files(tmp_path_factory):
    """The data set as an .npz archive, a teacher's workdir (initialised weights are enough:
    what matters is that every process loads them) and the config file launch.py reads."""
    tmp = tmp_path_factory.mktemp("job")
    dataset = tiny_dataset()
    data_path = str(tmp / "tiny.npz")
    np.savez(data_path, x_train=dataset.train.images, y_train=dataset.train.labels,
             x_test=dataset.test.images, y_test=dataset.test.labels)
    teacher_dir = str(tmp / "teacher")
    teacher = build_model(TEACHER, dataset.num_classes)
    variables = teacher.init(jax.random.key(7), dataset.train.images[:1] / 255.0, train=False)
    checkpoints = Checkpoints(teacher_dir)
    checkpoints.save_best(1, variables, 0.5)
    checkpoints.close()
    config_file = tmp / "job_config.py"
    config_file.write_text(CONFIG_FILE.format(tests=os.path.join(ROOT, "tests"),
                                              teacher=teacher_dir, data=data_path))
    launch = tmp / "launch_or_die.py"
    launch.write_text(LAUNCH_SCRIPT.format(launch=os.path.join(ROOT, "launch.py")))
    return teacher_dir, data_path, str(config_file), str(launch)


def test_two_processes_train_as_one_with_two_devices_and_resume_after_a_peer_dies(
        job_files, tmp_path):
    teacher_dir, data_path, config_file, launch = job_files
    env = dict(os.environ, PYTHONPATH=ROOT)
    workdir = tmp_path / "job"

    # Process 1 dies (SIGKILL) once epoch 1 is checkpointed: process 0 stops with one line,
    # soon (its next all-reduce fails), and nothing of epoch 2 is written.
    (rc0, _, err0), (rc1, _, _) = _launch_job(launch, workdir, config_file, env,
                                              die_after_epoch=1)
    assert rc1 == -signal.SIGKILL
    assert rc0 == 2, err0
    last_line = err0.strip().splitlines()[-1]
    assert last_line.startswith("error: process 0 of 2: a step across processes failed"), err0
    assert "start the same command in each: it resumes from the last checkpoint" in last_line
    assert [line["epoch"] for line in read_metrics(str(workdir / "metrics.jsonl"))] == [1]
    assert not (workdir / "summary.json").exists()

    # The same command (the job now given by the environment) resumes from epoch 1 and ends
    # as one process with two devices does. The first process alone reports.
    (rc0, out0, err0), (rc1, out1, err1) = _launch_job(launch, workdir, config_file, env,
                                                       by_environment=True)
    assert (rc0, rc1) == (0, 0), err0[-3000:] + err1[-3000:]
    assert '"final_test_accuracy"' in out0
    assert not [line for line in out1.splitlines() if not line.startswith("[Gloo]")], out1
    reference = tmp_path / "one_process"
    config = job_config(teacher_dir, data_path)
    config.num_devices = 2
    training.train_and_evaluate(config, str(reference))

    lines = read_metrics(str(workdir / "metrics.jsonl"))
    expected = read_metrics(str(reference / "metrics.jsonl"))
    assert [line["epoch"] for line in lines] == list(range(1, EPOCHS + 1))  # each once
    for got, want in zip(without_timing(lines), without_timing(expected)):
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6, err_msg=key)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 load_variables(str(workdir), "checkpoints"),
                 load_variables(str(reference), "checkpoints"))
    with open(workdir / "summary.json") as f:
        summary = json.load(f)
    assert summary["selected_epoch"] == EPOCHS
    assert sorted(os.listdir(workdir / "best")) == [str(EPOCHS)]
    # Written by the first process only: one TensorBoard file per start of the job, one lock
    # per process, no second metrics or config.
    assert len(os.listdir(workdir / "tensorboard")) == 2
    assert sorted(p for p in os.listdir(workdir) if p.startswith(".lock")) == [".lock",
                                                                               ".lock.1"]
    assert not [p for p in os.listdir(workdir) if p.endswith(".tmp")]


def test_the_mesh_takes_as_many_devices_from_every_process(monkeypatch):
    """The four devices of this process, read as two processes of two: the mesh takes the
    same number from each (so every process takes part in every step), as many as divide the
    batches."""
    devices = jax.devices()
    monkeypatch.setattr(mesh_module, "_devices_by_process", lambda: [devices[:2], devices[2:]])
    assert list(make_mesh(None, (8, 4)).devices) == devices
    assert list(make_mesh(None, (6,)).devices) == [devices[0], devices[2]]
    assert list(make_mesh(2).devices) == [devices[0], devices[2]]
    with pytest.raises(ValueError, match="num_devices=3 cannot be spread evenly over the 2 "
                                         "processes .2 devices each.; use a multiple of 2"):
        make_mesh(3)
    # A batch the processes cannot split: one device each, and check_batch says what to use.
    with pytest.raises(ValueError, match="batch_size=7 is not divisible by the 2 devices"):
        check_batch("batch_size", 7, make_mesh(None, (7,)))


def test_a_process_alone_places_every_row():
    mesh = make_mesh(None, (8, 6))
    assert mesh.size == 2  # of the 4 devices, 2 divide both batches
    np.testing.assert_array_equal(process_rows(mesh, 8), np.arange(8))
    images = np.arange(8 * 3).reshape(8, 3)
    (placed,) = shard_rows(mesh, (images[process_rows(mesh, 8)],), 8)
    np.testing.assert_array_equal(placed, images)
    assert placed.sharding.spec == jax.sharding.PartitionSpec("data")


def test_a_job_is_joined_only_when_asked_and_bad_values_are_one_line(monkeypatch):
    for name in (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES,
                 distributed.ENV_PROCESS_ID):
        monkeypatch.delenv(name, raising=False)
    assert distributed.initialize() is False  # one process: JAX is not asked
    with pytest.raises(ValueError,
                       match=r"process_id=2 .--process_id or JAX_PROCESS_ID. must be in 0..1"):
        distributed.initialize("localhost:1", num_processes=2, process_id=2)
    monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "two")
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES='two' must be an integer"):
        distributed.initialize()
    monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "2")
    monkeypatch.setenv(distributed.ENV_PROCESS_ID, "5")
    with pytest.raises(ValueError, match="process_id=5 .* in 0..1, one per process of the 2"):
        distributed.initialize()
