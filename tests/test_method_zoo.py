"""Every registered method, selected by its example config entry, trains through the real step.

For each method: a WRN-10-1 student and a briefly trained WRN-10-2 teacher on tiny data, the
stages the method declares and then the main stage, a few steps on one batch each, with the
term as the only loss; its loss must go down wherever the method gives one.
"""
import numpy as np
import pytest
from test_train import tiny_config, tiny_dataset

from vid_jax import methods, training
from vid_jax.checkpoints import load_variables

STEPS = 8
# Arguments for tiny data where an example entry is meant for a full data set. CRD's 4096
# negatives suit CIFAR's 50000 examples (K/M = 0.08); of these 48 examples it would draw every
# other one at each step (K/M ~ 1), where its NCE critic degenerates; 16 gives K/M = 1/3.
TINY_DATA_ARGS = {"crd": dict(num_negatives=16)}


@pytest.fixture(scope="module")
def teacher_variables(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("zoo") / "teacher")
    training.train_and_evaluate(tiny_config(**{"model.width": 2, "num_epochs": 3}), workdir,
                                dataset=tiny_dataset())
    return load_variables(workdir)


@pytest.mark.parametrize("name", sorted(methods.METHODS))
def test_method_trains_and_its_loss_goes_down(name, teacher_variables):
    method = methods.METHODS[name]
    config = tiny_config(batch_size=16, num_devices=1)
    config.augment.update(crop_padding=0, flip=False)  # one fixed batch: the loss must fall
    config.optimizer.update(schedule="constant", learning_rate=0.02)
    config.task_loss_weight = 0.0  # the term alone drives the update: its loss must fall
    config.distill[name] = dict(method.example, **TINY_DATA_ARGS.get(name, {}))
    term = methods.build_terms(config.distill)[0]
    if term.module.teacher_layer_names:
        config.teacher.model = dict(name="wrn", depth=10, width=2)
    run = training.prepare(config, tiny_dataset(),
                           teacher_variables=teacher_variables if config.teacher.model else None)
    assert [s.name for s in run.stages] == [s.name for s in method.stages]

    batch = run.batch(0)
    state, curves = run.state, {}
    for stage in [*run.stages, None]:
        state = run.place(run.start_stage(stage, state))
        step, values = run.train_step(stage), []
        for _ in range(STEPS):
            state, metrics = step(state, batch)
            values.append(metrics.get(f"{name}_loss"))
        # The stages the method declares, and the main stage unless it is an initialisation.
        active = stage is not None or methods.in_main_stage(term.module)
        assert (values[0] is not None) == active, stage
        if active:
            curves[stage.name if stage else "main"] = np.array([float(v) for v in values])

    assert curves, "the term never gave a loss"
    for stage_name, values in curves.items():
        assert np.all(np.isfinite(values)), (stage_name, values)
        # The mean of the last three steps against that of the first three: robust to sampled
        # negatives and to a loss that first rises as batch norm's statistics move (SP's).
        assert values[-3:].mean() < values[:3].mean(), (stage_name, values)
