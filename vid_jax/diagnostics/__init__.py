"""Diagnostics of finished runs: what distillation did, in numbers and figures.

    from vid_jax import diagnostics
    result = diagnostics.diagnose("workdirs/quickstart/student_vid_i",
                                  compare=["workdirs/quickstart/student"])
    diagnostics.write(result, "workdirs/quickstart/student_vid_i/diagnostics")  # JSON + PNGs

or `python -m vid_jax.diagnostics WORKDIR --compare=OTHER`. `measures.py` holds the pure
functions (per-position VID log-likelihood, linear CKA), `runs.py` reads a finished run back,
`analysis.py` computes, `plots.py` draws (matplotlib: `pip install vid-jax[plots]`).
"""
from vid_jax.diagnostics.analysis import (
    BOUND_NOTE,
    Diagnostics,
    FitSettings,
    HeadFit,
    LayerPair,
    RunDiagnostics,
    diagnose,
    fit_vid_heads,
    heatmap_panels,
    read_curves,
    summary_table,
    trained_vid_heads,
    training_images,
    vid_head,
    vid_log_likelihood_maps,
)
from vid_jax.diagnostics.measures import linear_cka, vid_log_likelihood
from vid_jax.diagnostics.runs import FinishedRun, load_run, model_layers, read_config

__all__ = [
    "BOUND_NOTE", "Diagnostics", "FinishedRun", "FitSettings", "HeadFit", "LayerPair",
    "RunDiagnostics", "diagnose", "fit_vid_heads", "heatmap_panels", "linear_cka", "load_run",
    "model_layers", "read_config", "read_curves", "summary_table", "trained_vid_heads",
    "training_images", "vid_head", "vid_log_likelihood", "vid_log_likelihood_maps", "write",
]


def write(diagnostics: Diagnostics, out_dir: str) -> dict[str, str]:
    """Writes diagnostics.json and the PNG figures into `out_dir`; returns {name: path}."""
    import json
    import os

    from vid_jax.diagnostics import plots  # matplotlib only here

    os.makedirs(out_dir, exist_ok=True)
    paths = plots.write_figures(diagnostics, out_dir)
    paths["json"] = os.path.join(out_dir, "diagnostics.json")
    with open(paths["json"], "w") as f:
        json.dump(diagnostics.to_json(), f, indent=2)
    return paths
