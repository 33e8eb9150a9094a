"""Runs a grid's cells in order, resumably, and tabulates them beside the paper.

Each cell trains in `workdir/<row>/<column>/seed<k>`. A cell whose summary.json exists is
done and is read, not rerun; a cell that was interrupted resumes from its latest checkpoint
(train.train_and_evaluate does that). After every cell the results file (JSON) and the
markdown table are rewritten, so an interrupted grid still leaves a table of what is done.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from vid_jax import checkpoints
from vid_jax.experiments.grids import Cell, Grid
from vid_jax.metric_writer import write_atomically

TrainFn = Callable[[Any, str], dict[str, Any]]


def check_teachers(cells: Sequence[Cell], how_to_train: str = "") -> None:
    """Fails before anything trains if a teacher that a cell distills from has no checkpoint."""
    for workdir in sorted({c.config.teacher.workdir for c in cells
                           if c.config.get("teacher") and c.config.teacher.get("model")}):
        try:
            checkpoints.checkpoint_directory(workdir)
        except FileNotFoundError as missing:
            if not how_to_train:
                raise
            raise FileNotFoundError(f"The grid's teacher has no checkpoint at {workdir}/best. "
                                    f"{how_to_train} Or pass --teacher_workdir=DIR.") from missing


def cell_result(cell: Cell, summary: dict[str, Any], workdir: str) -> dict[str, Any]:
    return {"row": cell.row, "column": cell.column, "seed": cell.seed,
            "final_test_accuracy": summary["final_test_accuracy"],
            "best_test_accuracy": summary["best_test_accuracy"],
            "epochs": summary["epochs"], "workdir": workdir}


def _sample_std(values: np.ndarray) -> float | None:
    """The spread a new seed would show (ddof=1); None for a single seed, which has none."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def aggregate(grid: Grid, results: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """row -> column -> {seeds, last/best mean and std (in %), paper} over the cells done."""
    table: dict[str, dict[str, Any]] = {}
    for row in grid.rows:
        for column in grid.columns:
            done = [r for r in results if r["row"] == row and r["column"] == column]
            if not done:
                continue
            last = 100 * np.array([r["final_test_accuracy"] for r in done])
            best = 100 * np.array([r["best_test_accuracy"] for r in done])
            table.setdefault(row, {})[column] = {
                "seeds": [r["seed"] for r in done],
                "last_mean": float(last.mean()), "last_std": _sample_std(last),
                "best_mean": float(best.mean()), "best_std": _sample_std(best),
                "paper": grid.paper.get((row, column))}
    return table


def markdown(grid: Grid, scale: str, table: dict[str, dict[str, Any]], command: str) -> str:
    """The table: per cell, last-epoch mean +- std over seeds / best-epoch mean (paper)."""
    columns = [c for c in grid.columns if any(c in table.get(r, {}) for r in grid.rows)]
    lines = [f"# {grid.title}", "", f"Scale: {scale}. Made by `{command}`.", "",
             "Each cell: test accuracy (%) of the last epoch, mean +- sample std over seeds (none "
             "for one seed) / "
             "mean of each seed's best epoch [n seeds] (the paper's number, where transcribed).",
             "", "| method | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for row in grid.rows:
        if row not in table:
            continue
        cells = []
        for column in columns:
            c = table[row].get(column)
            if c is None:
                cells.append("")
                continue
            paper = "-" if c["paper"] is None else f"{c['paper']:.2f}"
            spread = "" if c["last_std"] is None else f" +- {c['last_std']:.2f}"
            cells.append(f"{c['last_mean']:.2f}{spread} / {c['best_mean']:.2f} "
                         f"[{len(c['seeds'])}] ({paper})")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    if grid.notes:
        lines += ["", grid.notes]
    return "\n".join(lines) + "\n"


def _done(cells: Sequence[Cell], workdir: str) -> list[dict[str, Any]]:
    """The results of the cells whose runs have finished in `workdir`."""
    results = []
    for cell in cells:
        summary_path = os.path.join(workdir, cell.path, "summary.json")
        if os.path.exists(summary_path):
            with open(summary_path) as f:
                results.append(cell_result(cell, json.load(f), os.path.dirname(summary_path)))
    return results


def run_grid(grid: Grid, cells: Sequence[Cell], scale: str, workdir: str, results_path: str,
             command: str, train_fn: TrainFn | None = None,
             table_cells: Sequence[Cell] | None = None) -> dict[str, Any]:
    """Trains the `cells` not yet done, in order; after each, rewrites `results_path` (JSON)
    and the markdown beside it from every cell of `table_cells` (default: `cells`) that has
    finished in `workdir`, so running a few rows adds them to the grid's table."""
    if train_fn is None:
        from vid_jax.train import train_and_evaluate
        train_fn = train_and_evaluate
    check_teachers(cells, grid.teacher_hint)
    table_cells = list(table_cells or cells)
    table_cells += [c for c in cells if c.path not in {t.path for t in table_cells}]

    def write_report() -> dict[str, Any]:
        results = _done(table_cells, workdir)
        table = aggregate(grid, results)
        report = {"grid": grid.name, "title": grid.title, "scale": scale, "command": command,
                  "cells": results, "table": table}
        os.makedirs(os.path.dirname(os.path.abspath(results_path)), exist_ok=True)
        write_atomically(results_path, json.dumps(report, indent=2))
        write_atomically(os.path.splitext(results_path)[0] + ".md",
                         markdown(grid, scale, table, command))
        return report

    for i, cell in enumerate(cells):
        cell_dir = os.path.join(workdir, cell.path)
        if os.path.exists(os.path.join(cell_dir, "summary.json")):
            print(f"[{i + 1}/{len(cells)}] {cell.path}: done earlier", flush=True)
            continue
        print(f"[{i + 1}/{len(cells)}] {cell.path}: training in {cell_dir}", flush=True)
        summary = train_fn(cell.config, cell_dir)
        print(f"[{i + 1}/{len(cells)}] {cell.path}: final test accuracy "
              f"{100 * summary['final_test_accuracy']:.2f}%", flush=True)
        write_report()
    return write_report()
