"""The diagnostics' figures (matplotlib, the `plots` extra): each function draws one figure
from a `Diagnostics` and returns it; nothing here computes a measure.

Figures are `matplotlib.figure.Figure` objects made without pyplot, so no global state is
touched: a notebook displays them, `write_figures` saves them as PNG.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vid_jax.diagnostics.analysis import HEAD_SOURCES, Diagnostics, curve_key, heatmap_panels

try:
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
except ImportError as e:  # the library itself needs no matplotlib
    raise ImportError("The diagnostics' figures need matplotlib: pip install 'vid-jax[plots]' "
                      "(or pip install matplotlib).") from e

HEAD_LABELS = {"trained_heads": "its trained head", "fitted_heads": "a head fitted after"}
SHORT_HEAD_LABELS = {"trained_heads": "trained head", "fitted_heads": "fitted head"}


def _image(ax, image: np.ndarray, title: str = "") -> None:
    ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray",
              interpolation="nearest")
    ax.set_title(title, fontsize=8)


def _off(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def fig2(diagnostics: Diagnostics, display_size: int = 64) -> Figure:
    """The paper's Fig. 2: per example image (rows) and VID layer pair, the teacher layer's
    mean magnitude per position, then log q(t_hw | s) of every student and head (trained with
    the student, or fitted after to the frozen student), upsampled over the image. The maps of
    one pair and kind of head share a colour scale, in nats per position."""
    panels = heatmap_panels(diagnostics, display_size)
    maps = panels["runs"]
    per_pair = 1 + len(maps)
    columns = 1 + per_pair * len(diagnostics.pairs)
    rows = len(diagnostics.images)
    fig = Figure(figsize=(1.45 * columns + 0.5, 1.45 * rows + 2.0), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    for row in range(rows):
        _image(axes[row, 0], diagnostics.images[row], f"input, label {diagnostics.labels[row]}")
        for j, pair in enumerate(diagnostics.pairs):
            col = 1 + j * per_pair
            axes[row, col].imshow(panels["teacher"][pair.name][row], cmap="viridis", vmin=0,
                                  vmax=1)
            if row == 0:
                axes[row, col].set_title(f"{pair.name}\nteacher\nmean |t|", fontsize=8)
            for k, (name, source, by_pair) in enumerate(maps):
                ax = axes[row, col + 1 + k]
                ax.imshow(by_pair[pair.name][row], cmap="inferno", vmin=0, vmax=1)
                if row == 0:
                    ax.set_title(f"{pair.name}\n{name}\n{SHORT_HEAD_LABELS[source]}",
                                 fontsize=8)
    for ax in axes.flat:
        _off(ax)
    # One colour bar per pair and kind of head, under its columns.
    for j, pair in enumerate(diagnostics.pairs):
        for source in dict.fromkeys(source for _, source, _ in maps):
            cols = [1 + j * per_pair + 1 + k for k, (_, s, _) in enumerate(maps) if s == source]
            low, high = panels["range"][pair.name, source]
            bar = fig.colorbar(ScalarMappable(Normalize(low, high), "inferno"),
                               ax=list(axes[:, cols].flat), location="bottom", shrink=0.9,
                               aspect=12 * len(cols), ticks=[low, high])
            bar.ax.set_xticklabels([f"{low:.0f}", f"{high:.0f}"], fontsize=7)
            bar.set_label(f"{pair.name}, {SHORT_HEAD_LABELS[source]}: log q, nats",
                          fontsize=7)
    fig.suptitle("Where a student carries the teacher's information (VID, Fig. 2). Per layer: "
                 "the teacher's mean |t| per position, then log q(t_hw|s) = sum_c log q(t_chw|s) "
                 "of each student under its trained VID head or a head fitted after to the frozen "
                 "student;\nbrighter = the teacher's features there are likelier given the "
                 "student's. Maps of one layer and kind of head share the scale under them.",
                 fontsize=9)
    return fig


def vid_data_term(diagnostics: Diagnostics) -> Figure:
    """E[log q(t|s)] per teacher element, per layer pair, for every run and head."""
    bars = [(run.name, source) for run in diagnostics.runs for source in HEAD_SOURCES
            if source in run.log_likelihood]
    fig = Figure(figsize=(2.2 + 1.6 * len(diagnostics.pairs), 3.6), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(bars)
    x = np.arange(len(diagnostics.pairs))
    runs = {run.name: run for run in diagnostics.runs}
    for i, (name, source) in enumerate(bars):
        values = [runs[name].numbers["vid_data_term"][p.name][source]["per_element"]
                  for p in diagnostics.pairs]
        ax.bar(x + (i - (len(bars) - 1) / 2) * width, values, width,
               label=f"{name}, {HEAD_LABELS[source]}")
    ax.set_xticks(x, [p.name for p in diagnostics.pairs])
    ax.set_ylabel("E[log q(t|s)] per teacher element (nats)")
    ax.set_title("VID's bound on I(t; s), up to H(t) (the teacher's alone): higher is more "
                 "information", fontsize=9)
    ax.axhline(0, color="black", linewidth=0.5)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", fontsize=8,
               ncols=min(3, len(bars)))
    return fig


def cka(diagnostics: Diagnostics) -> Figure:
    """Linear CKA of every student layer against every teacher layer, one matrix per run."""
    runs = diagnostics.runs
    fig = Figure(figsize=(3.6 * len(runs) + 0.8, 3.4), layout="constrained")
    axes = fig.subplots(1, len(runs), squeeze=False)[0]
    for ax, run in zip(axes, runs):
        image = ax.imshow(run.cka, cmap="viridis", vmin=0, vmax=1)
        ax.set_xticks(range(len(diagnostics.cka_teacher_layers)),
                      diagnostics.cka_teacher_layers, rotation=45, fontsize=8)
        ax.set_yticks(range(len(diagnostics.cka_student_layers)),
                      diagnostics.cka_student_layers, fontsize=8)
        ax.set_xlabel("teacher layer")
        ax.set_ylabel(f"{run.name} layer")
        for (i, j), value in np.ndenumerate(run.cka):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if value < 0.6 else "black")
        ax.set_title(run.name, fontsize=9)
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="linear CKA")
    return fig


def attention(diagnostics: Diagnostics) -> Figure:
    """Attention maps (mean squared activation per position, normalised) of the teacher and
    every student, per layer pair, for the example images."""
    runs = diagnostics.runs
    per_pair = 1 + len(runs)
    columns = 1 + per_pair * len(diagnostics.pairs)
    rows = len(diagnostics.images)
    fig = Figure(figsize=(1.4 * columns, 1.4 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    for row in range(rows):
        _image(axes[row, 0], diagnostics.images[row], "input" if row == 0 else "")
        for j, pair in enumerate(diagnostics.pairs):
            col = 1 + j * per_pair
            maps = [("teacher", diagnostics.teacher_attention[pair.name][row])] + [
                (run.name, run.attention[pair.name][row]) for run in runs]
            high = max(float(m.max()) for _, m in maps)
            for k, (name, m) in enumerate(maps):
                axes[row, col + k].imshow(m, cmap="viridis", vmin=0, vmax=high,
                                          interpolation="nearest")
                if row == 0:
                    axes[row, col + k].set_title(f"{pair.name}: {name}", fontsize=8)
    for ax in axes.flat:
        _off(ax)
    fig.suptitle("Attention maps (Zagoruyko & Komodakis, p = 2); a pair's maps share a scale",
                 fontsize=9)
    return fig


def learning_curves(curves: Diagnostics | Mapping[str, Sequence[Mapping[str, Any]]]) -> Figure:
    """Every loss term and accuracy of metrics.jsonl over the epochs, one panel each, one line
    per run: of a `Diagnostics`' runs, or of {run name: metrics lines} (`read_curves`)."""
    if isinstance(curves, Diagnostics):
        curves = {run.name: run.curves for run in curves.runs}
    keys = sorted({k for lines in curves.values() for line in lines for k in line
                   if curve_key(k)},
                  key=lambda k: (k.endswith("accuracy"), k.startswith(("test", "validation")), k))
    columns = min(4, max(1, len(keys)))
    rows = max(1, -(-len(keys) // columns))
    fig = Figure(figsize=(3.3 * columns, 2.6 * rows), layout="constrained")
    axes = list(fig.subplots(rows, columns, squeeze=False).flat)
    for ax in axes[len(keys):]:
        ax.set_axis_off()
    for ax, key in zip(axes, keys):
        for name, lines in curves.items():
            points = [(line["epoch"], line[key]) for line in lines if key in line]
            if points:
                ax.plot(*zip(*points), label=name)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.legend(fontsize=7)
    return fig


FIGURES = {"fig2_heatmaps": fig2, "vid_data_term": vid_data_term, "cka": cka,
           "attention": attention, "learning_curves": learning_curves}


def write_figures(diagnostics: Diagnostics, out_dir: str, dpi: int = 100) -> dict[str, Any]:
    """Saves every figure of `FIGURES` as `out_dir/<name>.png`; returns {name: path}."""
    paths = {}
    for name, draw in FIGURES.items():
        paths[name] = os.path.join(out_dir, f"{name}.png")
        draw(diagnostics).savefig(paths[name], dpi=dpi)
    return paths
