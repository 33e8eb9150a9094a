"""Teachers with a task of their own and students that start from a checkpoint: a teacher's
classes, input size and normalisation are its own (Table 3 of the VID paper: an ImageNet
ResNet-34 teaching students of other classes), LwF's old-task head has the teacher's classes,
and `config.init_from` starts a student from a run's checkpoint or PyTorch weights, all of it
or all but its classifier (the paper's "Fine-tuning" row)."""
import os

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec
from safetensors.numpy import save_file

from vid_jax import augment, checkpoints, pretrained, training
from vid_jax.config_base import base_config
from vid_jax.models import build_model
from vid_jax.training import step as step_module
from vid_jax.training.prepare import init_student

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data",
                      "torchvision_golden.safetensors")
# The golden fixture's BasicBlock ResNet (7 classes) as a vid-jax model config.
GOLDEN_RESNET = dict(name="resnet18", stage_sizes=(2, 1, 1, 1), base_channels=4)
GOLDEN_CLASSES = 7
STUDENT = dict(name="vgg", config=((4,), (8,)))  # tiny: two max-pooled blocks, 8 features


@pytest.fixture(scope="module")
def torch_weights(tmp_path_factory):
    """The golden ResNet's state dict, in torchvision's names, as a .safetensors file."""
    tensors = pretrained.read_state_dict(GOLDEN)
    path = tmp_path_factory.mktemp("weights") / "resnet.safetensors"
    save_file({k[len("basic."):]: v for k, v in tensors.items() if k.startswith("basic.")},
              str(path))
    return str(path)


def _dataset(num_classes=3, per_class=8, size=12, seed=0):
    from vid_jax import data
    rng = np.random.default_rng(seed)

    def split(n):
        labels = np.repeat(np.arange(num_classes), n)
        return data.Split.from_arrays(rng.integers(0, 256, (len(labels), size, size, 3),
                                                   dtype=np.uint8), labels)

    return data.Dataset(train=split(per_class), test=split(2), num_classes=num_classes)


def _config(**teacher):
    config = base_config()
    config.data.mean, config.data.std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    config.augment.update(crop_padding=0, crop_size=8)  # stored 12 x 12, input 8 x 8
    config.model = dict(STUDENT)
    config.batch_size = config.eval_batch_size = 8
    config.num_devices = 1
    config.progress_bar = config.log_epochs = False
    config.teacher.update(model=dict(GOLDEN_RESNET), **teacher)
    return config


def test_a_teacher_of_another_task_teaches_through_lwf_and_vid(torch_weights):
    config = _config(weights=torch_weights, num_classes=GOLDEN_CLASSES, image_size=16,
                     mean=pretrained.IMAGENET_MEAN, std=pretrained.IMAGENET_STD)
    # The student's stage 1 (8 x 8 input: 4 x 4) meets the teacher's stage 1 (16 x 16: 4 x 4).
    config.distill.lwf = dict(weight=1.0, temperature=2.0)
    config.distill.vid_i = dict(weight=1.0, layers=("stage1",), teacher_layers=("stage1",))
    run = training.prepare(config, _dataset())
    assert run.teacher.num_classes == GOLDEN_CLASSES and run.student.num_classes == 3
    # LwF's old-task head predicts the teacher's 7 classes from the student's 8 features.
    assert run.state.params["heads"]["lwf"]["lwf"]["old_task_classifier"]["kernel"].shape == (
        8, GOLDEN_CLASSES)
    torch_conv1 = pretrained.read_state_dict(torch_weights)["conv1.weight"]
    np.testing.assert_array_equal(run.teacher_variables["params"]["conv1"]["kernel"],
                                  np.transpose(torch_conv1, (2, 3, 1, 0)))
    state, step = run.place(run.state), run.train_step()
    state, metrics = step(state, run.batch(0))
    metrics = jax.device_get(metrics)
    assert set(metrics) >= {"lwf_loss", "vid_i_loss"}
    assert all(np.isfinite(v) for v in metrics.values())
    # The teacher sees the student's crops in its own normalisation, resized to its 16 x 16.
    crops = run.dataset.train.images[:2, :8, :8].astype(np.float32)
    student_x = augment.normalize(crops, run.config.data.mean, run.config.data.std)
    teacher_x = step_module.teacher_input(run.config, crops, student_x)
    assert teacher_x.shape == (2, 16, 16, 3)
    np.testing.assert_allclose(teacher_x, augment.resize(augment.normalize(
        crops, pretrained.IMAGENET_MEAN, pretrained.IMAGENET_STD), 16), rtol=1e-6)
    assert step_module.teacher_input(_config(), crops, student_x) is student_x
    # Test images are centre-cropped to the student's 8 x 8.
    result = training.evaluate(
        training.make_eval_step(run.student, run.mesh, run.config),
        {"params": state.params["student"], "batch_stats": state.batch_stats},
        run.dataset.test, 8, NamedSharding(run.mesh, PartitionSpec("data")))
    assert 0.0 <= result["accuracy"] <= 1.0


def test_a_teacher_of_another_task_fails_clearly(torch_weights):
    config = _config(weights=torch_weights, image_size=16)
    config.distill.lwf = dict(weight=1.0)
    # Without its own classes the teacher is built with the student's 3 and does not fit.
    with pytest.raises(ValueError, match=r"The weights in .*resnet.safetensors does not fit "
                                         r"config.teacher.model .*3 classes\): fc.weight "
                                         r".*shape \(7, 32\).*Set config.teacher.model \(and "
                                         r"config.teacher.num_classes\)"):
        training.prepare(config, _dataset())
    config.teacher.num_classes = GOLDEN_CLASSES
    config.distill.kd = dict(weight=1.0)
    with pytest.raises(ValueError, match="kd compares the logits of one task, but the student "
                                         "has 3 classes and the teacher 7.*lwf or vid_lp"):
        training.prepare(config, _dataset())
    with pytest.raises(ValueError, match="sets num_classes; a model's classes are its task's: "
                                         "set config.teacher.num_classes"):
        build_model(dict(name="resnet34", num_classes=1000), 200)


def test_a_student_starts_from_pytorch_weights_all_but_its_classifier(torch_weights):
    student = build_model(GOLDEN_RESNET, 3)
    # Stand-ins for the student's initialisation (ones), which the weights overwrite.
    fresh = jax.tree.map(lambda a: np.ones(a.shape, a.dtype),
                         pretrained.model_template(student, (8, 8, 3)))
    init_from = base_config().init_from
    init_from.weights = torch_weights
    with pytest.raises(ValueError, match=r"fc.weight .*and the model's has \(32, 3\)\. A "
                                         r"checkpoint of another task's classes loads with "
                                         r"config.init_from.load_classifier=False"):
        init_student(init_from, student, fresh, (8, 8, 3))
    init_from.load_classifier = False
    start = init_student(init_from, student, fresh, (8, 8, 3))
    converted = pretrained.from_torch(pretrained.read_state_dict(torch_weights), student,
                                      (8, 8, 3), exclude=("fc",))
    jax.tree.map(np.testing.assert_array_equal, {k: {m: v for m, v in start[k].items()
                                                     if m != "fc"} for k in start}, converted)
    jax.tree.map(np.testing.assert_array_equal, start["params"]["fc"], fresh["params"]["fc"])
    init_from.weights = None
    assert init_student(init_from, student, fresh, (8, 8, 3)) is fresh


def test_a_student_starts_from_a_runs_checkpoint(monkeypatch, tmp_path):
    """From a run's workdir (its best/ variables, read by `checkpoints.load_variables`): a run
    of 5 classes fine-tuned on 3."""
    source = build_model(STUDENT, 5)
    saved = jax.jit(lambda: source.init(jax.random.key(3), np.zeros((1, 8, 8, 3)),
                                        train=False))()
    monkeypatch.setattr(checkpoints, "load_variables",
                        lambda workdir: jax.device_get(saved) if workdir == "source" else None)
    config = _config()
    config.teacher.model = None
    config.init_from.update(workdir="source", load_classifier=True)
    student = build_model(config.model, 3)
    with pytest.raises(ValueError, match=r"The checkpoint in source does not fit config.model: "
                                         r"params/classifier/kernel has shape \(8, 5\) there and "
                                         r"\(8, 3\) in the model\. A checkpoint of another "
                                         r"task's classes loads with"):
        init_student(config.init_from, student, {}, (8, 8, 3))
    config.init_from.weights = "x.safetensors"
    with pytest.raises(ValueError, match="config.init_from: set exactly one of"):
        init_student(config.init_from, student, {}, (8, 8, 3))
    config.init_from.update(weights=None, load_classifier=False)
    run = training.prepare(config, _dataset())
    np.testing.assert_array_equal(run.state.params["student"]["stage2_conv0"]["kernel"],
                                  saved["params"]["stage2_conv0"]["kernel"])
    np.testing.assert_array_equal(run.state.batch_stats["stage1_bn0"]["var"],
                                  saved["batch_stats"]["stage1_bn0"]["var"])
    assert run.state.params["student"]["classifier"]["kernel"].shape == (8, 3)


def test_the_transfer_grids_expand_with_their_rows_and_the_papers_numbers(tmp_path):
    from configs import cifar10_transfer, common, transfer_table3
    from vid_jax import runner

    for panel in ("mit67_resnet18", "mit67_vgg9", "cub_resnet18", "cub_vgg9"):
        config = transfer_table3.get_config(panel)
        runs = runner.expand(config, str(tmp_path))
        assert len(runs) == 10 * 4 * 3  # rows x M x seeds
        student = panel.split("_")[1]
        cells = {(r.row, r.column, r.seed): r.config for r in runs}
        column = config.table.columns[-1]
        fine = cells["fine_tuned", column, 0]
        assert not fine.distill and not fine.teacher.get("model")
        assert (fine.init_from.weights, fine.init_from.load_classifier) == (
            transfer_table3.WEIGHTS[student], False)
        assert fine.optimizer.learning_rate == 0.01
        both = cells["vid_lp+vid_i", column, 1]
        assert set(both.distill) == {"vid_lp", "vid_i"} and both.init_from.weights is None
        assert both.teacher.num_classes == 1000 and both.teacher.model.name == "resnet34"
        assert both.distill.vid_i.layers == transfer_table3.STUDENT_LAYERS[student]
        assert both.data.subset_seed == 1 and both.augment.crop_size == 224
        if panel != "mit67_vgg9":
            assert config.table.paper.to_dict() == common.PAPER[f"table3_{panel}"]
    assert common.PAPER["table3_cub_resnet18"]["vid_i"]["M=5"] == 46.21

    source = runner.expand(cifar10_transfer.get_config("source"), str(tmp_path))
    assert [r.name for r in source] == ["resnet34", "resnet18", "vgg9"]
    assert source[0].config.data.classes == cifar10_transfer.SOURCE_CLASSES
    grid = runner.expand(cifar10_transfer.get_config("vgg9"), str(tmp_path))
    assert len(grid) == 10 * 2 * 2
    fine = next(r.config for r in grid if r.row == "fine_tuned")
    assert fine.init_from.workdir == "workdirs/cifar10_transfer/vgg9"
    lwf = next(r.config for r in grid if r.row == "lwf")
    assert lwf.teacher.num_classes == 5 and lwf.data.classes == cifar10_transfer.TARGET_CLASSES


def test_missing_weights_and_start_points_fail_before_anything_trains(tmp_path, monkeypatch):
    from configs import cifar10_transfer, transfer_table3
    from vid_jax import runner

    monkeypatch.chdir(tmp_path)  # the configs' relative paths: none exists here, whatever ran

    config = transfer_table3.get_config("cub_vgg9")
    runs = runner.expand(config, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="config.init_from.weights: "
                                                "weights/vgg11_bn.safetensors does not exist"):
        runner.check_teachers(runs, config.teacher_hint)
    with pytest.raises(FileNotFoundError, match="config.teacher.weights: weights/resnet34."
                                                "safetensors does not exist. The teacher is "
                                                "torchvision's ImageNet ResNet-34"):
        runner.check_teachers([r for r in runs if r.row == "vid_i"], config.teacher_hint)
    grid = runner.expand(cifar10_transfer.get_config("resnet18"), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="config.init_from.workdir: workdirs/"
                                                "cifar10_transfer/resnet18 has no checkpoint"):
        runner.check_teachers([r for r in grid if r.row == "fine_tuned"])
