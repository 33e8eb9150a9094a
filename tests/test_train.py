"""The trainer: one step on many devices, the loop, checkpoints, resume, and bad-input errors."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from vid_jax import data, training
from vid_jax.checkpoints import load_variables
from vid_jax.config_base import base_config
from vid_jax.metric_writer import read_metrics
from vid_jax.models import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_dataset(per_class: int = 12, num_classes: int = 4, size: int = 8, seed: int = 0,
                 unlabelled_fraction: float = 0.0) -> data.Dataset:
    """Images whose class is a bright square in one of four places, plus noise."""
    rng = np.random.default_rng(seed)

    def split(n):
        labels = np.repeat(np.arange(num_classes), n)
        images = rng.integers(0, 60, (len(labels), size, size, 3))
        for i, c in enumerate(labels):
            r, q = divmod(int(c), 2)
            images[i, r * size // 2:(r + 1) * size // 2, q * size // 2:(q + 1) * size // 2] += 150
        labelled = rng.random(len(labels)) >= unlabelled_fraction
        return data.Split(images.astype(np.uint8), labels.astype(np.int32), labelled)

    return data.Dataset(train=split(per_class), test=split(per_class // 2),
                        num_classes=num_classes)


def tiny_config(**changes):
    config = base_config()
    config.data.mean, config.data.std = (0.3, 0.3, 0.3), (0.3, 0.3, 0.3)
    config.augment.crop_padding = 1
    config.model.update(depth=10, width=1)
    config.num_epochs = 3
    config.batch_size = 8
    config.eval_batch_size = 8
    config.optimizer.update(learning_rate=0.05, schedule="cosine")
    config.progress_bar = False
    config.log_epochs = False
    for key, value in changes.items():
        *path, last = key.split(".")
        node = config
        for p in path:
            node = node[p]
        node[last] = value
    return config


def distill_config(teacher_workdir=None, **changes):
    config = tiny_config(**changes)
    config.teacher.model = dict(name="wrn", depth=10, width=2)
    config.teacher.workdir = teacher_workdir
    config.distill.vid_i = dict(weight=1.0, layers=("group1", "group2", "group3"))
    config.distill.kd = dict(weight=0.5, temperature=4.0)
    return config


# ---------------------------------------------------------------------------------------------

def test_batch_sampler_is_a_pure_function_of_seed_and_step():
    sampler = training.BatchSampler(num_examples=10, batch_size=4, seed=3)
    batches = [sampler.indices(step) for step in range(5)]
    assert all(b.shape == (4,) for b in batches)
    stream = np.concatenate(batches)
    # Each epoch is a permutation; batches run on across the epoch's end.
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))
    again = training.BatchSampler(10, 4, seed=3)
    assert np.array_equal(again.indices(3), batches[3])  # no hidden state: a resume sees these
    assert not np.array_equal(training.BatchSampler(10, 4, seed=4).indices(0), batches[0])
    assert sampler.steps_per_epoch == 2


def _teacher_variables(dataset):
    teacher = build_model(dict(name="wrn", depth=10, width=2), dataset.num_classes)
    return teacher.init(jax.random.key(7), dataset.train.images[:1] / 255.0, train=False)


def _steps(num_devices, dataset, num_steps=3, distill=None, teacher_batch_norm="running"):
    config = distill_config(num_devices=num_devices)
    config.teacher.batch_norm = teacher_batch_norm
    if distill is not None:
        config.distill = distill
    run = training.prepare(config, dataset, teacher_variables=_teacher_variables(dataset))
    state, step = run.place(run.state), run.train_step()
    history, initial = [], jax.device_get(state)
    for i in range(num_steps):
        state, metrics = step(state, run.batch(i))
        history.append(jax.device_get(metrics))
    return jax.device_get(state), history, initial


def test_four_devices_give_the_results_of_one():
    assert jax.device_count() == 4, "tests/conftest.py simulates four CPU devices"
    dataset = tiny_dataset(unlabelled_fraction=0.4)
    one_state, one_metrics, initial = _steps(1, dataset)
    four_state, four_metrics, _ = _steps(4, dataset)
    # Batch-norm statistics, task loss over the labelled images only, distillation terms and
    # the update: all of the whole batch, however it is split.
    assert set(one_metrics[0]) == {"loss", "task_loss", "vid_i_loss", "kd_loss",
                                   "train_correct", "train_labelled"}
    for a, b in zip(one_metrics, four_metrics):
        for key in a:
            np.testing.assert_allclose(a[key], b[key], rtol=2e-5, atol=1e-6, err_msg=key)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 (one_state.params, one_state.batch_stats),
                 (four_state.params, four_state.batch_stats))
    assert int(four_state.step) == 3
    # The heads moved too: one optimizer updates student and heads together.
    alpha = lambda state: state.params["heads"]["vid_i"]["vid_group1"]["alpha"]
    assert not np.allclose(alpha(one_state), alpha(initial))


def test_a_teacher_on_batch_statistics_normalises_with_the_whole_batch():
    """teacher.batch_norm="batch" (the VID authors' teacher is never in eval mode): the
    teacher's batch norm uses the statistics of the whole batch however it is split over
    devices, and its layers differ from those of its running statistics."""
    dataset = tiny_dataset()
    terms = ("vid_i_loss", "kd_loss")
    _, one, _ = _steps(1, dataset, num_steps=2, teacher_batch_norm="batch")
    _, four, _ = _steps(4, dataset, num_steps=2, teacher_batch_norm="batch")
    _, running, _ = _steps(1, dataset, num_steps=2)
    for a, b in zip(one, four):
        for key in terms:
            np.testing.assert_allclose(a[key], b[key], rtol=2e-5, atol=1e-6, err_msg=key)
    for key in terms:
        assert abs(one[0][key] - running[0][key]) > 1e-3 * abs(running[0][key]), key


def test_a_shared_step_takes_the_teacher_fields_of_the_run_with_the_teacher():
    """A run without a teacher first in a shared step leaves teacher.batch_norm at its
    default; the taught run's "batch" must still be the step's."""
    dataset = tiny_dataset()
    student = training.prepare(tiny_config(num_devices=2), dataset)
    config = distill_config(num_devices=2)
    config.teacher.batch_norm = "batch"
    taught = training.prepare(config, dataset, teacher_variables=_teacher_variables(dataset))
    _, alone = taught.train_step()(taught.place(taught.state), taught.batch(0))
    _, (_, together) = training.shared_train_step([student, taught])(
        (student.place(student.state), taught.place(taught.state)), taught.batch(0))
    for key in ("vid_i_loss", "kd_loss"):
        np.testing.assert_allclose(together[key], alone[key], rtol=1e-5, err_msg=key)


def test_an_unknown_teacher_batch_norm_is_one_error():
    config = distill_config()
    config.teacher.batch_norm = "eval"
    with pytest.raises(ValueError, match=r"^config.teacher.batch_norm='eval': use \"running\""):
        training.prepare(config, tiny_dataset(), teacher_variables={})


def test_fitnets_weight_sets_the_hint_beside_the_task_loss_not_the_hint_stages_step():
    """FitNet's hint stage trains on the hint loss alone, so the term's weight (its strength
    beside the cross-entropy in the main stage, what a search varies) must not scale it: it
    would only scale that stage's learning rate."""
    dataset = tiny_dataset()
    teacher = _teacher_variables(dataset)

    def first_step(weight, stage_name):
        config = distill_config(num_devices=1)
        config.distill = {"fitnet": dict(weight=weight, layers=("group2",))}
        run = training.prepare(config, dataset, teacher_variables=teacher)
        stage = next((s for s in run.stages if s.name == stage_name), None)
        state, metrics = run.train_step(stage)(run.place(run.start_stage(stage, run.state)),
                                               run.batch(0))
        return jax.device_get(state.params), float(metrics["loss"])

    (hint_1, loss_1), (hint_10, loss_10) = (first_step(w, "fitnet_hint") for w in (1.0, 10.0))
    assert loss_1 == pytest.approx(loss_10)
    jax.tree.map(np.testing.assert_array_equal, hint_1, hint_10)
    (main_1, loss_1), (main_10, loss_10) = (first_step(w, None) for w in (1.0, 10.0))
    assert loss_10 > loss_1
    assert not all(jax.tree.leaves(jax.tree.map(np.allclose, main_1["student"],
                                                main_10["student"])))


def test_online_peers_see_the_whole_batch_however_its_labels_fall_across_devices():
    """DML's and IE-DML's peers learn from the labelled images of the whole batch: with labels
    spread unevenly over 4 devices (one device may hold none), their losses and updates equal
    those of one device. IE-DML normalised its peer's cross-entropy per device before."""
    dataset = tiny_dataset(unlabelled_fraction=0.6, seed=3)
    peer = dict(name="wrn", depth=10, width=1)
    distill = {"dml": dict(peer_models=(peer,)), "ie_dml": dict(peer_model=peer)}
    one_state, one_metrics, _ = _steps(1, dataset, num_steps=1, distill=distill)
    four_state, four_metrics, _ = _steps(4, dataset, num_steps=1, distill=distill)
    config = distill_config()
    sampler = training.BatchSampler(len(dataset.train), config.batch_size, config.seed)
    per_device = dataset.train.labelled[sampler.indices(0)].reshape(4, -1).sum(1)
    assert len(set(per_device.tolist())) > 1, f"labels fall evenly: {per_device}"
    for a, b in zip(one_metrics, four_metrics):
        for key in ("dml_loss", "ie_dml_loss", "loss"):
            np.testing.assert_allclose(a[key], b[key], rtol=2e-5, atol=1e-6, err_msg=key)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 one_state.params["heads"], four_state.params["heads"])


def test_metric_sums_keep_two_steps_in_flight_and_add_in_float64(monkeypatch):
    fetched = []
    real_device_get = jax.device_get
    monkeypatch.setattr(jax, "device_get", lambda x: fetched.append(x) or real_device_get(x))
    step_value = np.float32(0.1)
    sums = training.MetricSums()
    sums.add({"loss": jax.numpy.asarray(step_value)})
    assert fetched == [], "the first step is not waited for when it is dispatched"
    for _ in range(2999):
        sums.add({"loss": jax.numpy.asarray(step_value)})
    # Adding step n fetched step n-1: the host never runs more than one step ahead.
    assert len(fetched) == 2999
    result = sums.result()
    assert len(fetched) == 3000
    # float32 accumulation would be 0.009 off after 3,000 steps of 0.1.
    assert abs(result["loss"] - 3000 * float(step_value)) < 1e-9


def test_each_stage_trains_what_its_methods_declare_and_calls_only_their_terms():
    """FT's stage trains its paraphraser alone; the main stage everything but it; KD (no
    stage) takes no part in FT's stage; FSP (an initialisation) none in the main stage."""
    dataset = tiny_dataset()
    config = distill_config(None)
    config.distill = {"ft": dict(layer="group2"), "kd": {}, "fsp": dict(adapt=True)}
    run = training.prepare(config, dataset, teacher_variables=_teacher_variables(dataset))
    stages = {stage.name: stage for stage in run.stages}
    ft_stage, fsp_stage = stages["ft_paraphraser"], stages["fsp_init"]
    assert [t.name for t in run.active_terms(ft_stage)] == ["ft"]
    assert [t.name for t in run.active_terms(fsp_stage)] == ["fsp"]
    assert sorted(t.name for t in run.active_terms()) == ["ft", "kd"]

    def labels(stage):
        tx_labels = training.parameter_labels(run.state.params, stage is None or
                                              stage.trains_student, run._trains_head(stage))
        heads = {term: {sub: set(jax.tree.leaves(v)) for sub, v in subs.items()}
                 for term, subs in tx_labels["heads"].items()}
        return set(jax.tree.leaves(tx_labels["student"])), heads

    student, heads = labels(ft_stage)
    assert student == {"frozen"}
    assert heads["ft"] == {"paraphraser": {"heads"}, "translator": {"frozen"}}
    assert all(v == {"frozen"} for v in heads["fsp"].values())
    student, heads = labels(None)
    assert student == {"student"}
    assert heads["ft"] == {"paraphraser": {"frozen"}, "translator": {"heads"}}
    assert all(v == {"frozen"} for v in heads["fsp"].values())
    student, heads = labels(fsp_stage)
    assert student == {"student"} and all(v == {"heads"} for v in heads["fsp"].values())
    assert all(v == {"frozen"} for v in heads["ft"].values())

    # A step of FT's stage reports FT's reconstruction loss alone and moves only the paraphraser.
    before = jax.device_get(run.state.params)  # the step donates the state it is given
    state = run.place(run.start_stage(ft_stage, run.state))
    new, metrics = run.train_step(ft_stage)(state, run.batch(0))
    assert {k for k in metrics if k.endswith("_loss")} == {"task_loss", "ft_loss"}
    assert float(metrics["loss"]) == pytest.approx(float(metrics["ft_loss"]), rel=1e-5)
    after = jax.device_get(new.params)
    moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), before, after)
    assert set(jax.tree.leaves(moved["student"])) == {False}
    assert set(jax.tree.leaves(moved["heads"]["ft"]["paraphraser"])) == {True}
    assert set(jax.tree.leaves(moved["heads"]["ft"]["translator"])) == {False}


def test_a_stage_runs_first_in_its_own_workdir_and_hands_its_weights_on(tmp_path):
    config = distill_config(None, num_epochs=2)
    config.distill = {"fitnet": dict(layers=("group2",))}
    config.stage_epochs = {"fitnet_hint": 2}
    # The hint stage trains on the hint loss alone: no task loss.
    dataset = tiny_dataset()
    run = training.prepare(config, dataset, teacher_variables=_teacher_variables(dataset))
    stage_state, stage_summary = training.train_stage(run, run.state, str(tmp_path / "hint"),
                                                   run.stages[0])
    lines = read_metrics(str(tmp_path / "hint" / "metrics.jsonl"))
    assert [line["task_loss"] > 0 for line in lines] == [True, True]  # reported, not trained
    assert lines[-1]["loss"] == pytest.approx(lines[-1]["fitnet_loss"], rel=1e-5)
    state = run.start_stage(None, stage_state)
    assert int(state.step) == 0
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params),
                 jax.device_get(stage_state.params))


# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """A tiny teacher trained once for the tests below; returns its workdir and summary."""
    workdir = str(tmp_path_factory.mktemp("runs") / "teacher")
    config = tiny_config(**{"model.width": 2, "num_epochs": 4})
    summary = training.train_and_evaluate(config, workdir, dataset=tiny_dataset())
    return workdir, summary


def test_runs_trained_together_give_what_each_gives_alone(teacher_run, tmp_path):
    """Three runs of one column and seed (no distillation; VID-I + KD with a stage-free
    pair; FitNet, whose hint stage runs alone first) in one shared step, against each alone:
    the same metrics, checkpoints and summaries up to float round-off."""
    teacher_workdir, _ = teacher_run
    student = tiny_config(num_epochs=1, num_devices=2)
    vid = distill_config(teacher_workdir, num_epochs=1, num_devices=2)
    fitnet = distill_config(teacher_workdir, num_epochs=1, num_devices=2)
    fitnet.distill = {"fitnet": dict(layers=("group2",))}
    fitnet.stage_epochs = {"fitnet_hint": 1}
    configs = [student, vid, fitnet]
    alone = [training.train_and_evaluate(c, str(tmp_path / f"alone{i}"), dataset=tiny_dataset())
             for i, c in enumerate(configs)]
    workdirs = [str(tmp_path / f"together{i}") for i in range(3)]
    together = training.train_together(configs, workdirs, dataset=tiny_dataset())
    for i, (a, b) in enumerate(zip(alone, together)):
        assert b["trained_together_with"] == [w for w in workdirs if w != workdirs[i]]
        assert a["final_test_accuracy"] == pytest.approx(b["final_test_accuracy"], abs=1e-9)
        for term, losses in a["term_losses"].items():
            for when, value in losses.items():
                assert value == pytest.approx(b["term_losses"][term][when], rel=1e-4), term
        np.testing.assert_allclose(
            [line["loss"] for line in read_metrics(str(tmp_path / f"alone{i}/metrics.jsonl"))],
            [line["loss"] for line in read_metrics(os.path.join(workdirs[i], "metrics.jsonl"))],
            rtol=1e-4)
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-4),
                     load_variables(str(tmp_path / f"alone{i}")), load_variables(workdirs[i]))
    assert "stages" in together[2] and os.path.isdir(os.path.join(workdirs[2], "stages"))


def test_runs_that_see_other_batches_cannot_share_a_step(tmp_path):
    with pytest.raises(ValueError, match=r"same config.seed; got 0 and 1"):
        training.train_together([tiny_config(), tiny_config(seed=1)],
                                [str(tmp_path / "a"), str(tmp_path / "b")],
                                dataset=tiny_dataset())
    assert not os.path.exists(tmp_path / "a")


def test_a_run_writes_metrics_checkpoints_and_summary(teacher_run):
    workdir, summary = teacher_run
    lines = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    assert [line["epoch"] for line in lines] == [1, 2, 3, 4]
    assert {"loss", "task_loss", "train_accuracy", "test_accuracy", "test_loss",
            "learning_rate", "images_per_sec"} <= set(lines[0])
    assert lines[-1]["loss"] < lines[0]["loss"]
    assert lines[-1]["learning_rate"] < lines[0]["learning_rate"]  # the cosine schedule
    assert os.listdir(os.path.join(workdir, "tensorboard"))
    with open(os.path.join(workdir, "summary.json")) as f:
        assert json.load(f) == summary
    assert summary["final_test_accuracy"] == lines[-1]["test_accuracy"]
    assert summary["best_test_accuracy"] == max(line["test_accuracy"] for line in lines)
    assert summary["best_test_accuracy"] > 0.5  # four classes: chance is 0.25
    best = load_variables(workdir)
    assert set(best) == {"params", "batch_stats"}


def test_distillation_with_unlabelled_images_reads_the_teacher(teacher_run, tmp_path):
    teacher_workdir, _ = teacher_run
    config = distill_config(teacher_workdir, num_epochs=3)
    config.teacher.model.width = 2
    summary = training.train_and_evaluate(config, str(tmp_path / "vid"),
                                       dataset=tiny_dataset(unlabelled_fraction=0.5))
    lines = read_metrics(str(tmp_path / "vid" / "metrics.jsonl"))
    assert lines[-1]["vid_i_loss"] < lines[0]["vid_i_loss"]
    assert lines[-1]["kd_loss"] > 0 and summary["epochs"] == 3
    # The summary gives each term's loss before any update, from epoch 1's record only.
    assert set(summary["term_losses"]) == {"vid_i", "kd"}
    vid = summary["term_losses"]["vid_i"]
    assert vid["first_step"] == lines[0]["vid_i_loss_at_start"]
    assert vid["first_epoch"] == lines[0]["vid_i_loss"] != vid["first_step"]  # several steps
    assert "vid_i_loss_at_start" not in lines[1]


def test_a_diverged_run_stops_with_what_blew_up_and_writes_nothing_of_that_epoch(tmp_path):
    workdir = tmp_path / "run"
    training.train_and_evaluate(tiny_config(num_epochs=1), str(workdir), dataset=tiny_dataset())
    # Resumed from epoch 1 with a learning rate no network survives.
    config = tiny_config(num_epochs=3)
    config.optimizer.learning_rate = 1e12
    with pytest.raises(training.TrainingDiverged, match=r"diverged in epoch 2: .*task_loss nan"):
        training.train_and_evaluate(config, str(workdir), dataset=tiny_dataset(),
                                    allow_changes=("num_epochs", "optimizer.learning_rate"))
    assert [line["epoch"] for line in read_metrics(str(workdir / "metrics.jsonl"))] == [1]
    assert sorted(os.listdir(workdir / "checkpoints")) == ["1"]
    # No epoch trained under the changes: the workdir still records the config of epoch 1.
    assert not (workdir / "config_changes.jsonl").exists()
    assert json.loads((workdir / "config.json").read_text())["num_epochs"] == 1
    assert load_variables(str(workdir))  # the checkpoint before it still loads


def test_evaluating_every_other_epoch(tmp_path):
    config = tiny_config(num_epochs=3, eval_every_epochs=2)
    summary = training.train_and_evaluate(config, str(tmp_path / "run"), dataset=tiny_dataset())
    lines = read_metrics(str(tmp_path / "run" / "metrics.jsonl"))
    assert ["test_accuracy" in line for line in lines] == [False, True, True]
    assert summary["best_test_accuracy"] == max(lines[1]["test_accuracy"],
                                                lines[2]["test_accuracy"])
    assert summary["final_test_accuracy"] == lines[2]["test_accuracy"]
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["2", "3"]


def test_rerunning_a_finished_run_trains_nothing(teacher_run):
    workdir, summary = teacher_run
    before = os.path.getmtime(os.path.join(workdir, "metrics.jsonl"))
    config = tiny_config(**{"model.width": 2, "num_epochs": 4})
    again = training.train_and_evaluate(config, workdir, dataset=tiny_dataset())
    assert again["final_test_accuracy"] == summary["final_test_accuracy"]
    assert read_metrics(os.path.join(workdir, "metrics.jsonl"))[-1]["epoch"] == 4
    assert os.path.getmtime(os.path.join(workdir, "metrics.jsonl")) >= before


# ---------------------------------------------------------------------------------------------
# Bad input: one clear error, raised before the workdir is written.

def test_missing_teacher_checkpoint(tmp_path):
    workdir = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="No checkpoint at .*nowhere.*train that model "
                                                "first"):
        training.train_and_evaluate(distill_config(str(tmp_path / "nowhere")), str(workdir),
                                 dataset=tiny_dataset())
    assert not workdir.exists()


def test_teacher_checkpoint_of_another_model(teacher_run, tmp_path):
    config = distill_config(teacher_run[0])
    config.teacher.model.width = 4  # the teacher was WRN-10-2
    with pytest.raises(ValueError, match="does not fit config.teacher.model"):
        training.train_and_evaluate(config, str(tmp_path / "run"), dataset=tiny_dataset())
    assert not (tmp_path / "run").exists()


def test_layer_that_is_not_sown(teacher_run, tmp_path):
    config = distill_config(teacher_run[0])
    config.teacher.model.width = 2
    config.distill.vid_i.layers = ("group1", "group4")
    with pytest.raises(ValueError,
                       match=r"\['group4'\].*it sows: features, group1, group1_preact, "
                             r"group2, group2_preact, group3, group3_preact, logits\.$"):
        training.train_and_evaluate(config, str(tmp_path / "run"), dataset=tiny_dataset())
    assert not (tmp_path / "run").exists()


def test_unknown_method(tmp_path):
    config = tiny_config()
    config.distill.vid = dict(weight=1.0)
    with pytest.raises(ValueError, match="Unknown distillation method 'vid'"):
        training.train_and_evaluate(config, str(tmp_path / "run"), dataset=tiny_dataset())
    assert not (tmp_path / "run").exists()


def test_batch_not_divisible_by_devices(tmp_path):
    with pytest.raises(ValueError, match="batch_size=6 is not divisible by the 4 devices"):
        training.train_and_evaluate(tiny_config(batch_size=6, num_devices=4),
                                 str(tmp_path / "run"), dataset=tiny_dataset())
    assert not (tmp_path / "run").exists()
    # Without num_devices, the mesh takes as many devices as divide both batch sizes.
    assert training.prepare(tiny_config(batch_size=6, eval_batch_size=12),
                         tiny_dataset()).mesh.size == 3
    assert training.prepare(tiny_config(batch_size=6), tiny_dataset()).mesh.size == 2
    assert training.prepare(tiny_config(), tiny_dataset()).mesh.size == 4


# ---------------------------------------------------------------------------------------------
# SIGKILL and resume.

def train_vid_i(workdir: str, teacher: str, epochs: int) -> None:
    """The run the kill test kills, resumes and trains whole: VID-I from a tiny teacher."""
    config = tiny_config(num_epochs=epochs)
    config.distill.vid_i = dict(weight=1.0)
    config.teacher.model = dict(name="wrn", depth=10, width=2)
    config.teacher.workdir = teacher
    training.train_and_evaluate(config, workdir, dataset=tiny_dataset(per_class=16))


RUN_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from test_train import train_vid_i
    train_vid_i(sys.argv[1], {teacher!r}, {epochs})
""")


def test_a_killed_run_resumes_to_the_state_of_an_uninterrupted_one(teacher_run, tmp_path):
    """SIGKILL in a subprocess once epoch 2 is saved; the same run in this process (the same
    XLA flags, so the same devices) resumes it and trains it whole."""
    epochs = 4
    script = tmp_path / "run.py"
    script.write_text(RUN_SCRIPT.format(tests=os.path.join(ROOT, "tests"), epochs=epochs,
                                        teacher=teacher_run[0]))
    env = dict(os.environ, PYTHONPATH=ROOT)
    killed, whole = tmp_path / "killed", tmp_path / "whole"

    process = subprocess.Popen([sys.executable, str(script), str(killed)], env=env)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "2").exists():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "summary.json").exists()
    train_vid_i(str(killed), teacher_run[0], epochs)
    train_vid_i(str(whole), teacher_run[0], epochs)

    resumed, uninterrupted = (load_variables(str(d), "checkpoints") for d in (killed, whole))
    assert int(resumed["step"]) == int(uninterrupted["step"]) == epochs * 8
    jax.tree.map(np.testing.assert_array_equal, resumed, uninterrupted)
    drop_timing = lambda lines: [{k: v for k, v in line.items() if k != "images_per_sec"}
                                 for line in lines]
    assert drop_timing(read_metrics(str(killed / "metrics.jsonl"))) == drop_timing(
        read_metrics(str(whole / "metrics.jsonl")))


def test_load_variables_from_a_run_on_another_device_count(tmp_path):
    """A teacher saved by a 2-device process loads in this one (4 devices), onto one device:
    orbax alone refuses to restore a checkpoint saved with another topology."""
    script = textwrap.dedent(f"""
        import os
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
        import jax, numpy as np
        from jax.sharding import NamedSharding, PartitionSpec as P
        from vid_jax.checkpoints import Checkpoints
        mesh = jax.make_mesh((2,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
        variables = jax.device_put({{"params": {{"w": np.arange(6.0).reshape(2, 3)}},
                                     "batch_stats": {{"m": np.ones(3)}}}},
                                    NamedSharding(mesh, P()))
        ckpt = Checkpoints({str(tmp_path)!r})
        ckpt.save(1, variables, variables, 0.5)
        ckpt.close()
    """)
    subprocess.run([sys.executable, "-c", script], check=True, env={**os.environ, "XLA_FLAGS": ""})
    variables = load_variables(str(tmp_path))
    np.testing.assert_array_equal(variables["params"]["w"], np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(variables["batch_stats"]["m"], np.ones(3))
    assert variables["params"]["w"].sharding.device_set == {jax.local_devices()[0]}
