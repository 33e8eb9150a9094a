"""The diagnostics of finished runs: numbers and arrays, no plotting (that is `plots.py`).

For one or more students distilled from (or compared against) one teacher:

- per layer pair, VID's data term E[log q(t | s)] on test images, with the run's trained VID
  heads where it has them, and with heads fitted afterwards on the frozen student (the same
  fit for every run, so students compare on equal terms; the paper fits heads so for its
  student without transfer). I(t; s) >= H(t) + E[log q(t | s)] (VID, eq. 3), and H(t) is the
  teacher's alone: between students of one teacher layer, a higher data term is a higher
  bound on the information the student carries about it;
- Fig. 2's maps: log q(t_hw | s) per position of a few test images, the teacher's mean
  magnitude per position, and attention maps (Zagoruyko & Komodakis) of student and teacher;
- linear CKA (Kornblith et al. 2019) between every student and every teacher layer;
- the learning curves of every loss term, read from metrics.jsonl.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vid_jax import data, heads, losses
from vid_jax.diagnostics import measures
from vid_jax.diagnostics.runs import FinishedRun, load_run, model_layers, read_config
from vid_jax.methods.core import VIDI
from vid_jax.metric_writer import read_metrics
from vid_jax.models import WRN_GROUPS

# Layers whose CKA is taken, where both models sow them (maps and vectors alike).
CKA_LAYERS = (*WRN_GROUPS, "features", "logits")
BOUND_NOTE = ("E[log q(t|s)] is VID's variational bound on I(t; s) up to H(t): "
              "I(t; s) >= H(t) + E[log q(t|s)] (Ahn et al. 2019, eq. 3). H(t) depends on the "
              "teacher alone, not on the student, so between students of one teacher layer a "
              "higher value is a higher lower bound on the information the student carries "
              "about it. In nats, on test images, Gaussian constant included; per_element = "
              "per_image / (H*W*C) of the teacher map (after pooling to the student's size).")


@dataclasses.dataclass(frozen=True)
class LayerPair:
    """A student layer and the teacher layer it is matched with."""

    student: str
    teacher: str

    @property
    def name(self) -> str:
        return self.student if self.student == self.teacher else f"{self.student}-{self.teacher}"


@dataclasses.dataclass(frozen=True)
class FitSettings:
    """How VID heads are fitted to a frozen student (`fit_vid_heads`).

    Adam with a cosine decay, on minibatches of at most `max_images` training images (the
    training split without the run's per-class subset: the heads measure the student, not the
    few images it may have trained on) of which `held_out` are kept aside. The parameters of
    the step with the lowest held-out loss (checked every `check_every` steps) are kept, so
    that a head that starts to overfit (its variances shrink onto the training images) is not
    the one used; each pair keeps its own best step.
    """

    steps: int = 2000
    batch_size: int = 128
    learning_rate: float = 1e-2
    max_images: int = 4096
    held_out: float = 0.2
    check_every: int = 50
    seed: int = 0


@dataclasses.dataclass
class RunDiagnostics:
    """One student's numbers (`numbers`, JSON-ready) and the arrays its figures draw."""

    name: str
    workdir: str
    numbers: dict[str, Any]
    curves: list[dict[str, Any]]            # metrics.jsonl, one dict per epoch
    # head source ("trained_heads", "fitted_heads") -> pair -> [k, h, w] log q(t_hw | s) on
    # the example images
    log_likelihood: dict[str, dict[str, np.ndarray]]
    attention: dict[str, np.ndarray]        # pair -> [k, h, w] student attention maps
    cka: np.ndarray                         # [student layers, teacher layers]


@dataclasses.dataclass
class Diagnostics:
    """Diagnostics of students of one teacher; `runs[0]` is the run asked about."""

    teacher: dict[str, Any]                 # the config.teacher entry the runs were measured on
    pairs: list[LayerPair]
    images: np.ndarray                      # [k, H, W, C] uint8 example test images
    labels: np.ndarray                      # [k]
    teacher_magnitude: dict[str, np.ndarray]  # pair -> [k, h, w]
    teacher_attention: dict[str, np.ndarray]  # pair -> [k, h, w]
    cka_student_layers: list[str]
    cka_teacher_layers: list[str]
    runs: list[RunDiagnostics]
    settings: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"note": BOUND_NOTE, "teacher": self.teacher,
                "layer_pairs": [[p.student, p.teacher] for p in self.pairs],
                "cka_layers": {"student": self.cka_student_layers,
                               "teacher": self.cka_teacher_layers},
                "settings": self.settings,
                "runs": {r.name: r.numbers for r in self.runs}}


# -- VID heads ------------------------------------------------------------------------------

def vid_head(term: VIDI, teacher_channels: int) -> heads.VIDHead:
    """The head a VID-I term builds for a teacher layer of `teacher_channels` (as
    `methods.core.VIDI` does), in evaluation mode."""
    return heads.VIDHead(teacher_channels, term.hidden_channels, term.num_layers,
                         term.init_variance, term.eps, term.mean_network, term.variance)


def trained_vid_heads(run: FinishedRun, pairs: Sequence[LayerPair]) -> dict[str, Any] | None:
    """The variables of the run's own VID-I heads per pair, or None if it has none for
    every pair."""
    term = run.term("vid_i")
    if term is None:
        return None
    names = {LayerPair(s, t) for s, t in zip(term.module.student_layer_names,
                                             term.module.teacher_layer_names)}
    if not set(pairs) <= names:
        return None
    params, state = run.head_params[term.name], run.head_state[term.name]
    return {p.name: {"params": params[f"vid_{p.student}"],
                     **{c: tree[f"vid_{p.student}"] for c, tree in state.items()
                        if f"vid_{p.student}" in tree}}
            for p in pairs}


@dataclasses.dataclass
class HeadFit:
    """Fitted heads (pair name -> variables) and how the fit went."""

    variables: dict[str, Any]
    losses: list[float]  # the pairs' summed VID-I loss per step, on the training minibatch
    held_out_losses: dict[str, list[float]]  # pair -> its loss on the held-out images at
                                             # step 0 and every `check_every` steps
    best_steps: dict[str, int]  # pair -> the step whose parameters were kept (0: initial)
    num_images: int             # training images the fit saw


def fit_vid_heads(run: FinishedRun, pairs: Sequence[LayerPair], term: VIDI,
                  images: np.ndarray, settings: FitSettings = FitSettings()) -> HeadFit:
    """Heads fitted by maximum likelihood to the frozen student and teacher of `run`.

    Each pair's `vid_head(term, C_t)` starts from its initialisation and minimises
    `losses.vid_nll` (the VID-I loss) on the layers of `images` (uint8, at most
    `settings.max_images` of them taken at random, without augmentation; the layers are
    computed once, as neither network changes); see `FitSettings` for the held-out check.
    """
    rng = np.random.default_rng(settings.seed)
    chosen = np.sort(rng.permutation(len(images))[:settings.max_images])
    student_input, teacher_input = run.inputs(images[chosen])
    student = model_layers(run.student, run.student_variables, student_input)
    taught = model_layers(run.teacher, run.teacher_variables, teacher_input)
    inputs = [tuple(np.asarray(a) for a in _matched(student[p.student], taught[p.teacher]))
              for p in pairs]
    num_held_out = int(round(settings.held_out * len(chosen)))
    if num_held_out < 1 or num_held_out >= len(chosen):
        raise ValueError(f"Fitting VID heads on {len(chosen)} images with held_out="
                         f"{settings.held_out} leaves none to fit or to check on.")
    order = rng.permutation(len(chosen))
    held_out = [(s[order[:num_held_out]], t[order[:num_held_out]]) for s, t in inputs]
    fit_on = [(s[order[num_held_out:]], t[order[num_held_out:]]) for s, t in inputs]

    modules = tuple(vid_head(term, t.shape[-1]) for _, t in inputs)
    key = jax.random.key(settings.seed)
    variables = [_init(m, jax.random.fold_in(key, i), s[:1], t[:1])
                 for i, (m, (s, t)) in enumerate(zip(modules, inputs))]
    params = [v["params"] for v in variables]
    others = [{c: x for c, x in v.items() if c != "params"} for v in variables]
    step, held_out_loss, tx = _fit_step(modules, settings)
    opt_state = tx.init(params)
    batch_size = min(settings.batch_size, len(chosen) - num_held_out)
    history, checks = [], [np.asarray(held_out_loss(params, others, held_out))]
    # Each pair keeps the parameters of its own best check (layers overfit at other times).
    best = [(checks[0][i], 0, params[i], others[i]) for i in range(len(pairs))]
    for step_number in range(1, settings.steps + 1):
        idx = rng.choice(len(chosen) - num_held_out, batch_size, replace=False)
        params, others, opt_state, loss = step(params, others, opt_state,
                                               [(s[idx], t[idx]) for s, t in fit_on])
        history.append(loss)
        if step_number % settings.check_every == 0 or step_number == settings.steps:
            checks.append(np.asarray(held_out_loss(params, others, held_out)))
            best = [(checks[-1][i], step_number, params[i], others[i])
                    if checks[-1][i] < b[0] else b for i, b in enumerate(best)]
    return HeadFit({p.name: {"params": b[2], **b[3]} for p, b in zip(pairs, best)},
                   [float(v) for v in history],
                   {p.name: [float(c[i]) for c in checks] for i, p in enumerate(pairs)},
                   {p.name: b[1] for p, b in zip(pairs, best)}, len(chosen) - num_held_out)


@functools.lru_cache(maxsize=8)
def _fit_step(modules: tuple[heads.VIDHead, ...], settings: FitSettings):
    """The jitted step of `fit_vid_heads`, its held-out loss and its optimizer, built once per
    setting."""
    tx = optax.adam(optax.cosine_decay_schedule(settings.learning_rate, settings.steps))

    @jax.jit
    def step(params, others, opt_state, batch):
        def loss_fn(params):
            total, new_others = 0.0, []
            for module, p_params, p_others, (s, t) in zip(modules, params, others, batch):
                loss, updated = module.apply({"params": p_params, **p_others}, s, t, train=True,
                                             mutable=list(p_others))
                total, new_others = total + loss, [*new_others, updated]
            return total, new_others

        (loss, new_others), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_others, opt_state, loss

    @jax.jit
    def held_out_loss(params, others, batch):  # per pair
        return jnp.stack([module.apply({"params": p_params, **p_others}, s, t) for
                          module, p_params, p_others, (s, t) in zip(modules, params, others,
                                                                    batch)])

    return step, held_out_loss, tx


@functools.partial(jax.jit, static_argnums=0)
def _log_q(head: heads.VIDHead, variables: Any, s: jax.Array, t: jax.Array) -> jax.Array:
    s, t = losses.match_spatial(s, t)
    mean, variance = head.apply(variables, s, method=heads.VIDHead.mean_and_variance)
    return measures.vid_log_likelihood(t, mean, variance)


def vid_log_likelihood_maps(head: heads.VIDHead, variables: Any, student_map: np.ndarray,
                            teacher_map: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """log q(t_hw | s) per example and position ([n, h, w]) under a VID head's Gaussian;
    maps of different sizes are pooled to the smaller first, as the loss does. Batches are
    padded to `batch_size` (one compilation per head)."""
    out = []
    for start in range(0, student_map.shape[0], batch_size):
        s, t = student_map[start:start + batch_size], teacher_map[start:start + batch_size]
        pad = [(0, batch_size - s.shape[0])] + [(0, 0)] * (s.ndim - 1)
        out.append(np.asarray(_log_q(head, variables, np.pad(s, pad), np.pad(t, pad)))[
            :s.shape[0]])
    return np.concatenate(out)


def _bound(log_q: np.ndarray, channels: int) -> dict[str, float]:
    """E[log q(t|s)] of [n, h, w] per-position values, per image, position and element."""
    per_image = float(np.mean(np.sum(log_q, axis=(1, 2))))
    positions = log_q.shape[1] * log_q.shape[2]
    return {"per_image": per_image, "per_position": per_image / positions,
            "per_element": per_image / (positions * channels)}


# -- the rest -------------------------------------------------------------------------------

# Jitted once per shape: op by op, each small operation would compile on its own.
_init = jax.jit(lambda module, key, s, t: module.init(key, s, t), static_argnums=0)
_matched = jax.jit(losses.match_spatial)
_attention_distance = jax.jit(losses.attention_transfer)
_mean_magnitude = jax.jit(measures.mean_magnitude)
_upsample = jax.jit(measures.upsample, static_argnums=(1, 2))
_rescale = jax.jit(measures.rescale)


@jax.jit
def _attention_maps(features: jax.Array) -> jax.Array:
    n, h, w, _ = features.shape
    return losses.attention_map(features).reshape(n, h, w)


def attention_maps(features: np.ndarray) -> np.ndarray:
    """Zagoruyko & Komodakis's normalised attention maps (p = 2), [n, h, w]."""
    return np.asarray(_attention_maps(features))


@jax.jit
def _cka(students: tuple[jax.Array, ...], teachers: tuple[jax.Array, ...]) -> jax.Array:
    student_grams = [measures.centred_gram(x) for x in students]
    teacher_grams = [measures.centred_gram(x) for x in teachers]
    return jnp.array([[measures.gram_alignment(k, l_) for l_ in teacher_grams]
                      for k in student_grams])


def cka_matrix(student: dict[str, np.ndarray], teacher: dict[str, np.ndarray],
               student_layers: Sequence[str], teacher_layers: Sequence[str]) -> np.ndarray:
    """Linear CKA (`measures.linear_cka`) of every student layer against every teacher layer."""
    return np.asarray(_cka(tuple(student[k] for k in student_layers),
                           tuple(teacher[k] for k in teacher_layers)), dtype=np.float64)


def loss_curves(workdir: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """metrics.jsonl, and per loss term and accuracy its first and last epoch's value."""
    path = os.path.join(workdir, "metrics.jsonl")
    lines = read_metrics(path) if os.path.isfile(path) else []
    keys = sorted({k for line in lines for k in line if curve_key(k)})
    ends = {}
    for k in keys:
        values = [(line["epoch"], line[k]) for line in lines if k in line]
        ends[k] = {"first_epoch": values[0][0], "first": values[0][1],
                   "last_epoch": values[-1][0], "last": values[-1][1]}
    return lines, ends


def read_curves(workdirs: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """{run name (the workdir's last part): its metrics.jsonl lines}, for
    `plots.learning_curves`."""
    return {os.path.basename(os.path.normpath(w)): loss_curves(w)[0] for w in workdirs}


def curve_key(key: str) -> bool:
    """Whether a metrics.jsonl key is a learning curve drawn: a loss term or an accuracy."""
    return (key.endswith("_loss") or key == "loss" or key.endswith("_accuracy")) and \
        not key.endswith("_at_start")


def example_indices(labels: np.ndarray, count: int) -> np.ndarray:
    """The first test image of each of the first `count` classes (then the next ones)."""
    firsts = [int(np.flatnonzero(labels == c)[0]) for c in np.unique(labels)]
    rest = [i for i in range(len(labels)) if i not in set(firsts)]
    return np.array((firsts + rest)[:count])


def training_images(run: FinishedRun) -> np.ndarray:
    """The run's training images without its per-class subsets (`images_per_class`,
    `labels_per_class`): what heads are fitted on."""
    data_config = run.config.data
    if not (data_config.get("images_per_class") or data_config.get("labels_per_class")):
        return run.dataset.train.images
    data_config = copy.deepcopy(data_config)
    data_config.images_per_class = data_config.labels_per_class = None
    return data.load_dataset({**data_config.to_dict(), "load": "memory"}).train.images


def _pairs(run: FinishedRun, layers: Sequence[str] | None) -> tuple[list[LayerPair], VIDI]:
    """The layer pairs and VID-I head settings: the run's VID-I term's, else `layers` (default
    WRN's group ends) with VID-I's defaults."""
    term = run.term("vid_i")
    if term is not None and layers is None:
        return [LayerPair(s, t) for s, t in zip(term.module.student_layer_names,
                                                term.module.teacher_layer_names)], term.module
    layers = tuple(layers or WRN_GROUPS)
    return [LayerPair(name, name) for name in layers], (
        term.module.clone(layers=layers, teacher_layers=None) if term else VIDI(layers=layers))


def diagnose(workdir: str, compare: Sequence[str] = (), teacher_workdir: str | None = None,
             layers: Sequence[str] | None = None, num_examples: int = 1000,
             num_images: int = 4, fit: FitSettings = FitSettings()) -> Diagnostics:
    """Diagnostics of the run in `workdir`, and of the `compare` runs on the same teacher,
    layer pairs and test images.

    Args:
        workdir: a finished run's workdir.
        compare: workdirs of other students (e.g. the same student without distillation).
        teacher_workdir: the teacher's workdir; default the run's `config.teacher`.
        layers: the student layers to pair with the teacher's of the same name; default the
            run's VID-I layer pairs, else WRN's group ends.
        num_examples: test images over which the data term and CKA are taken (the first).
        num_images: test images the maps are drawn for (one per class first).
        fit: how the VID heads of every run are fitted to the frozen student.
    """
    main = load_run(workdir, teacher_workdir)
    if main.teacher is None:
        raise ValueError(f"{workdir} was trained without a teacher: give one "
                         "(--teacher=WORKDIR, or teacher_workdir=) to diagnose it against.")
    others = [load_run(w, main.teacher_config,
                       main.dataset if read_config(w).data == main.config.data else None)
              for w in compare]
    pairs, term = _pairs(main, layers)
    test = main.dataset.test
    n = min(num_examples, len(test))
    examples = example_indices(test.labels[:n], num_images)
    taught = model_layers(main.teacher, main.teacher_variables, main.inputs(test.images[:n])[1])
    fit_images = training_images(main)
    students = [model_layers(run.student, run.student_variables, run.inputs(test.images[:n])[0])
                for run in [main, *others]]
    runs = [_diagnose_run(run, student, test.labels[:n], taught, pairs, term, examples,
                          fit_images, fit)
            for run, student in zip([main, *others], students)]

    # The teacher's maps at the size the loss compares them (pooled to the student's).
    pooled = {p.name: np.asarray(_matched(students[0][p.student][examples],
                                          taught[p.teacher][examples])[1]) for p in pairs}
    return Diagnostics(
        teacher=main.teacher_config.to_dict(), pairs=pairs, images=test.images[examples],
        labels=test.labels[examples],
        teacher_magnitude={k: np.asarray(_mean_magnitude(v)) for k, v in pooled.items()},
        teacher_attention={k: attention_maps(v) for k, v in pooled.items()},
        cka_student_layers=[k for k in CKA_LAYERS if k in students[0]],
        cka_teacher_layers=[k for k in CKA_LAYERS if k in taught], runs=runs,
        settings={"test_examples": n, "example_indices": examples.tolist(),
                  "fit": dataclasses.asdict(fit),
                  "vid_head": {"mean_network": term.mean_network, "variance": term.variance,
                               "num_layers": term.num_layers,
                               "hidden_channels": term.hidden_channels,
                               "init_variance": term.init_variance, "eps": term.eps}})


def _diagnose_run(run: FinishedRun, student: dict[str, np.ndarray], labels: np.ndarray,
                  taught: dict[str, np.ndarray], pairs: Sequence[LayerPair], term: VIDI,
                  examples: np.ndarray, fit_images: np.ndarray,
                  settings: FitSettings) -> RunDiagnostics:
    """One student's diagnostics from its layers and the teacher's on the test images."""
    for p in pairs:
        if p.student not in student or p.teacher not in taught:
            raise ValueError(f"Layer pair {p.name}: the student of {run.workdir} sows "
                             f"{sorted(student)}, the teacher {sorted(taught)}.")
    trained = trained_vid_heads(run, pairs)
    fitted = fit_vid_heads(run, pairs, term, fit_images, settings)
    bound: dict[str, Any] = {}
    log_q_examples: dict[str, dict[str, np.ndarray]] = {}
    for p in pairs:
        channels = taught[p.teacher].shape[-1]
        head = vid_head(term, channels)
        bound[p.name] = {}
        for source, variables in (("trained_heads", trained),
                                  ("fitted_heads", fitted.variables)):
            if variables is not None:
                log_q = vid_log_likelihood_maps(head, variables[p.name], student[p.student],
                                                taught[p.teacher])
                bound[p.name][source] = _bound(log_q, channels)
                log_q_examples.setdefault(source, {})[p.name] = log_q[examples]

    cka_student = [k for k in CKA_LAYERS if k in student]
    cka_teacher = [k for k in CKA_LAYERS if k in taught]
    cka = cka_matrix(student, taught, cka_student, cka_teacher)
    curves, curve_ends = loss_curves(run.workdir)
    numbers = {
        "workdir": run.workdir, "step": run.step, "terms": [t.name for t in run.terms],
        "test_accuracy": float(np.mean(np.argmax(student["logits"], -1) == labels)),
        "vid_data_term": bound,
        "vid_head_fit": {
            "training_images": fitted.num_images, "best_step": fitted.best_steps,
            "held_out_loss": {k: {"first": v[0], "best": min(v), "last": v[-1]}
                              for k, v in fitted.held_out_losses.items()},
            "loss_note": "VID-I's loss of the pair's head (losses.vid_nll: mean per element, "
                         "without the Gaussian constant) on the held-out training images"},
        "linear_cka": {p.name: float(cka[cka_student.index(p.student),
                                         cka_teacher.index(p.teacher)]) for p in pairs},
        "linear_cka_matrix": cka.tolist(),
        "attention_distance": {p.name: float(_attention_distance(
            student[p.student], taught[p.teacher])) for p in pairs},
        "learning_curves": curve_ends,
    }
    attention = {p.name: attention_maps(
        _matched(student[p.student][examples], taught[p.teacher][examples])[0]) for p in pairs}
    return RunDiagnostics(run.name, run.workdir, numbers, curves, log_q_examples, attention,
                          cka)


HEAD_SOURCES = ("trained_heads", "fitted_heads")


def heatmap_panels(diagnostics: Diagnostics, size: int | None = None) -> dict[str, Any]:
    """Fig. 2's panels, upsampled (bilinearly) to `size` x `size` (default: the image's size)
    and scaled to [0, 1].

    Returns {"teacher": pair -> [k, size, size], the teacher's mean magnitude, each image to its
    own range; "runs": [(run name, head source, pair -> [k, size, size])], log q(t_hw | s);
    "range": (pair, head source) -> (low, high) in nats per position}. The maps of one pair and
    head source share one range over the runs and images, so that brighter is likelier across
    them: the students' fitted heads compare on one scale, the trained heads on their own.
    """
    height, width = diagnostics.images.shape[1:3]
    height, width = (size, size) if size else (height, width)
    panels: dict[str, Any] = {"teacher": {}, "runs": [], "range": {}}
    upsampled = {}
    for p in diagnostics.pairs:
        magnitude = np.asarray(_upsample(diagnostics.teacher_magnitude[p.name], height, width))
        low = np.min(magnitude, axis=(1, 2), keepdims=True)
        high = np.max(magnitude, axis=(1, 2), keepdims=True)
        panels["teacher"][p.name] = np.asarray(_rescale(magnitude, low, high))
        for source in HEAD_SOURCES:
            maps = {r.name: np.asarray(_upsample(r.log_likelihood[source][p.name], height, width))
                    for r in diagnostics.runs if source in r.log_likelihood}
            if maps:
                low = min(float(m.min()) for m in maps.values())
                high = max(float(m.max()) for m in maps.values())
                panels["range"][p.name, source] = (low, high)
                for name, m in maps.items():
                    upsampled[name, source, p.name] = np.asarray(_rescale(m, low, high))
    for r in diagnostics.runs:
        for source in HEAD_SOURCES:
            if source in r.log_likelihood:
                panels["runs"].append((r.name, source, {p.name: upsampled[r.name, source, p.name]
                                                        for p in diagnostics.pairs}))
    return panels


def summary_table(diagnostics: Diagnostics) -> str:
    """The numbers as a markdown table: per run and layer pair, the data term per teacher
    element (trained head / fitted head), linear CKA and attention distance."""
    lines = ["| run | test acc | pair | E[log q(t|s)] per element, trained head | "
             "fitted head | linear CKA | attention distance |", "|---|---|---|---|---|---|---|"]
    for run in diagnostics.runs:
        n = run.numbers
        for p in diagnostics.pairs:
            bound = n["vid_data_term"][p.name]
            trained = bound.get("trained_heads", {}).get("per_element")
            lines.append(
                f"| {run.name} | {100 * n['test_accuracy']:.2f} | {p.name} | "
                f"{'' if trained is None else f'{trained:.3f}'} | "
                f"{bound['fitted_heads']['per_element']:.3f} | {n['linear_cka'][p.name]:.3f} | "
                f"{n['attention_distance'][p.name]:.2e} |")
    return "\n".join(lines)
