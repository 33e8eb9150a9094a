"""One way to run a config: a single run, a pipeline of runs, or a grid of a paper's cells.

Every config expands into runs, each an ordinary run config for `train_and_evaluate` in a
workdir of its own:

- a run config: one run, in the workdir itself;
- a pipeline (`jobs`: name -> run config, `job_order`, optional `descriptions`): each job in
  `workdir/<name>`, in order; a `teacher.workdir` may say `{workdir}` for the pipeline's;
- a grid (`cell`; see `grid_config`): rows x columns x seeds, each cell in
  `workdir/<row>/<column>/seed<k>`. The selection (`rows`, `columns`, `seeds`) and the fields
  shared by every cell are config fields, so `--config.` overrides reach them; the cells are
  expanded from the config after the overrides.

One resume rule for all: a run whose summary.json exists is finished and is read, not run
again; an interrupted run resumes from its latest checkpoint (`train_and_evaluate` does that).
After every run of a grid, its results JSON and markdown table are rewritten, so an
interrupted grid still leaves a table of what is done.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from vid_jax import checkpoints
from vid_jax.metric_writer import write_atomically

TrainFn = Callable[[ml_collections.ConfigDict, str], dict[str, Any]]
# Several runs in one shared step: (configs, workdirs) -> their summaries.
TogetherFn = Callable[[Sequence[ml_collections.ConfigDict], Sequence[str]], list[dict[str, Any]]]


def _default_train_fns() -> tuple[TrainFn, TogetherFn]:
    # The one place the runner names the trainer (imported late: JAX starts with it).
    from vid_jax.training import train_and_evaluate, train_together
    return train_and_evaluate, train_together


# ---------------------------------------------------------------------------------------------
# Grid configs.

def grid_config(name: str, title: str, cell: ml_collections.ConfigDict,
                rows: Sequence[str], columns: Mapping[str, Mapping[str, Any]], *,
                terms: Mapping[str, Mapping[str, Any]],
                teacher: ml_collections.ConfigDict | None = None,
                train_images: Mapping[str, int] | None = None,
                seeds: Sequence[int] = (0, 1), seed_fields: Sequence[str] = ("seed",),
                scale: str = "", images_per_cell: int | None = None,
                paper: Mapping[str, Mapping[str, float]] | None = None, notes: str = "",
                teacher_hint: str = "", results: str | None = None,
                runs_per_step: int = 8) -> ml_collections.ConfigDict:
    """A grid: the config a table of the paper is. Its fields, which overrides may change:

      rows, columns, seeds  the cells to run: comma-separated names (default: all) and seeds
      cell                  the run config every cell starts from
      terms                 config.distill entries; a row's terms are its name split on "+"
                            ("student": none), so `terms.vid_i.weight` reaches every row
                            with VID-I
      teacher               config.teacher of the rows with terms
      images_per_cell       when set, a cell whose num_epochs is None trains about this many
                            images: round(images_per_cell / its column's train_images)
                            epochs; then eval_every_epochs (None: num_epochs // 10) and
                            checkpoint_every_epochs (None: as eval_every_epochs)
      results               the results JSON (the markdown table goes beside it)
      runs_per_step         at most this many cells that see the same batches (the rows of
                            one column and seed) train together in one jitted step, which
                            computes the teacher's forward once (`training.train_together`);
                            1 trains each cell alone
      table                 the whole grid in its order: rows, columns, seeds; per column its
                            changes to the cell and its train_images; seed_fields (set to
                            the cell's seed); paper (row -> column -> the paper's number)
    """
    columns = dict(columns)
    config = ml_collections.ConfigDict()
    config.name, config.title, config.notes, config.scale = name, title, notes, scale
    config.rows = ",".join(rows)
    config.columns = ",".join(columns)
    config.seeds = ",".join(str(s) for s in seeds)
    config.cell = cell
    config.terms = ml_collections.ConfigDict({t: dict(e) for t, e in terms.items()})
    config.teacher = teacher or ml_collections.ConfigDict(dict(model=None, workdir=None))
    config.teacher_hint = teacher_hint
    config.images_per_cell = images_per_cell
    config.results = results or os.path.join("results", f"{name}_{scale or 'grid'}.json")
    config.runs_per_step = runs_per_step
    config.table = ml_collections.ConfigDict(dict(
        rows=tuple(rows), columns=tuple(columns), seeds=tuple(seeds),
        changes={c: dict(changes) for c, changes in columns.items()},
        train_images=dict(train_images or {}), seed_fields=tuple(seed_fields),
        paper={r: dict(by_column) for r, by_column in (paper or {}).items()}))
    for row in rows:
        unknown = [t for t in row_terms(row) if t not in config.terms]
        if unknown:
            raise ValueError(f"Grid {name}: row {row!r} has terms {unknown} that are not in "
                             f"its terms ({', '.join(config.terms)}).")
    return config


def row_terms(row: str) -> list[str]:
    """A grid row's distillation terms: "kd+vid_i" -> [kd, vid_i]; "student" -> []."""
    return [] if row == "student" else row.split("+")


def kind(config: ml_collections.ConfigDict) -> str:
    """"grid", "pipeline" or "run"."""
    return "grid" if "cell" in config else "pipeline" if "jobs" in config else "run"


def _selection(config: ml_collections.ConfigDict
               ) -> tuple[list[str], list[str], list[int]]:
    """The rows, columns and seeds a grid config selects, checked against its table."""
    chosen = {}
    for field in ("rows", "columns"):
        known = list(config.table[field])
        asked = [a for a in (config[field] or "").split(",") if a] or known
        unknown = [a for a in asked if a not in known]
        if unknown:
            raise ValueError(f"--config.{field}: grid {config.name} has no {field[:-1]} "
                             f"{unknown}; its {field} are {', '.join(known)}.")
        chosen[field] = asked
    try:
        seeds = [int(s) for s in str(config.seeds).split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--config.seeds={config.seeds}: give comma-separated integers, "
                         "e.g. 0,1.") from None
    return chosen["rows"], chosen["columns"], seeds or list(config.table.seeds)


def _set_path(config: ml_collections.ConfigDict, path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for p in parents:
        config = config[p]
    config[leaf] = value


def _update(config: ml_collections.ConfigDict, changes: Mapping[str, Any]) -> None:
    """Sets the nested `changes` in `config`, keeping the fields they do not name."""
    for key, value in changes.items():
        if isinstance(value, (Mapping, ml_collections.ConfigDict)) and isinstance(
                config.get(key), ml_collections.ConfigDict):
            _update(config[key], value)
        else:
            config[key] = value


def grid_cell(config: ml_collections.ConfigDict, row: str, column: str,
              seed: int) -> ml_collections.ConfigDict:
    """The run config of one cell: the cell base, the column's changes, the row's terms (and
    the teacher where it has any), the seed, and the epochs of the images per cell."""
    cell = copy.deepcopy(config.cell)
    cell.unlock()
    _update(cell, config.table.changes[column])
    if row_terms(row):
        cell.teacher = copy.deepcopy(config.teacher)
    for term in row_terms(row):
        cell.distill[term] = copy.deepcopy(config.terms[term])
    for field in config.table.seed_fields:
        _set_path(cell, field, seed)
    if config.images_per_cell and cell.num_epochs is None:
        cell.num_epochs = max(1, round(config.images_per_cell
                                       / config.table.train_images[column]))
    if cell.get("eval_every_epochs", 1) is None:
        cell.eval_every_epochs = max(1, cell.num_epochs // 10)
    if cell.get("checkpoint_every_epochs", 1) is None:
        cell.checkpoint_every_epochs = cell.eval_every_epochs
    if cell.num_epochs is None:
        raise ValueError(f"Cell {row}/{column}: num_epochs is None and the grid has no "
                         "images_per_cell to derive it from; set --config.cell.num_epochs.")
    return cell


# ---------------------------------------------------------------------------------------------
# Runs.

@dataclasses.dataclass(frozen=True)
class Run:
    name: str     # the job's name, the cell's row/column/seed<k>, or "" for a single run
    workdir: str
    config: ml_collections.ConfigDict
    row: str | None = None
    column: str | None = None
    seed: int | None = None

    @property
    def done(self) -> bool:
        return os.path.exists(os.path.join(self.workdir, "summary.json"))

    def label(self) -> str:
        return self.name or self.workdir


def _cell_name(row: str, column: str, seed: int) -> str:
    return f"{row}/{column}/seed{seed}"


def expand(config: ml_collections.ConfigDict, workdir: str) -> list[Run]:
    """The runs of a config, in order (see the module's docstring)."""
    if kind(config) == "grid":
        rows, columns, seeds = _selection(config)
        return [Run(_cell_name(r, c, s), os.path.join(workdir, r, c, f"seed{s}"),
                    grid_cell(config, r, c, s), r, c, s)
                for r in rows for c in columns for s in seeds]
    if kind(config) == "pipeline":
        unknown = [n for n in config.job_order if n not in config.jobs]
        if unknown:
            raise ValueError(f"config.job_order names jobs {unknown} that config.jobs lacks.")
        runs = []
        for name in config.job_order:
            job = copy.deepcopy(config.jobs[name])
            job.unlock()
            if job.get("teacher") and job.teacher.get("workdir"):
                job.teacher.workdir = job.teacher.workdir.format(workdir=workdir)
            runs.append(Run(name, os.path.join(workdir, name), job))
        return runs
    return [Run("", workdir, config)]


def check_overrides(config: ml_collections.ConfigDict, overrides: Iterable[str],
                    runs: Sequence[Run]) -> None:
    """An override that reaches no run would change nothing: an error naming it.

    `overrides` are the overridden field paths (`terms.vid_i.weight`); config_flags already
    refuses fields the config does not have."""
    for path in overrides:
        parts = path.split(".")
        if kind(config) == "grid":
            terms = {t for r in runs for t in row_terms(r.row)}
            if parts[0] == "terms" and len(parts) > 1 and parts[1] not in terms:
                raise ValueError(f"--config.{path}: no row to run has the term {parts[1]!r} "
                                 f"(rows: {config.rows}); pick rows that do with "
                                 "--config.rows.")
            if parts[0] == "teacher" and not terms:
                raise ValueError(f"--config.{path}: no row to run has a teacher "
                                 f"(rows: {config.rows}).")
            if parts[:2] in (["table", "changes"], ["table", "train_images"]) and \
                    len(parts) > 2 and parts[2] not in {r.column for r in runs}:
                raise ValueError(f"--config.{path}: column {parts[2]!r} is not run "
                                 f"(columns: {config.columns}).")
        elif kind(config) == "pipeline" and parts[0] == "jobs" and len(parts) > 1 \
                and parts[1] not in config.job_order:
            raise ValueError(f"--config.{path}: job {parts[1]!r} is not in config.job_order "
                             f"({', '.join(config.job_order)}).")


def check_teachers(runs: Sequence[Run], how_to_train: str = "") -> None:
    """Fails before anything trains if a run to train distills from a teacher that has no
    checkpoint and that no earlier run of the same config trains."""
    earlier: set[str] = set()
    for run in runs:
        teacher = run.config.get("teacher")
        if not run.done and teacher and teacher.get("model") and teacher.get("workdir") \
                and os.path.abspath(teacher.workdir) not in earlier:
            try:
                checkpoints.checkpoint_directory(teacher.workdir)
            except FileNotFoundError as missing:
                if not how_to_train:
                    raise
                raise FileNotFoundError(
                    f"The grid's teacher has no checkpoint at {teacher.workdir}/best. "
                    f"{how_to_train} Or set --config.teacher.workdir=DIR.") from missing
        earlier.add(os.path.abspath(run.workdir))


def step_groups(runs: Sequence[Run], runs_per_step: int) -> list[list[Run]]:
    """The runs in groups that can share a train step (`training.check_shareable`: the same
    batches and teacher), at most `runs_per_step` each, in the order of their first runs."""
    from vid_jax.training.prepare import SHARED_FIELDS

    def value(config, field):
        v = config.get(field)
        return v.to_dict() if isinstance(v, ml_collections.ConfigDict) else v

    def teacher(config):
        t = config.get("teacher")
        return json.dumps(t.to_dict(), sort_keys=True, default=str) if t and t.get("model") \
            else None

    groups: list[tuple[str, list[str | None], list[Run]]] = []
    for run in runs:
        shared = json.dumps({f: value(run.config, f) for f in SHARED_FIELDS}, sort_keys=True,
                            default=str)
        mine = teacher(run.config)
        for key, teachers, members in groups:
            others = {t for t in teachers if t is not None}
            if key == shared and len(members) < runs_per_step and (mine is None or
                                                                     others <= {mine}):
                members.append(run)
                teachers.append(mine)
                break
        else:
            groups.append((shared, [mine], [run]))
    return [members for _, _, members in groups]


def describe(runs: Sequence[Run]) -> str:
    """One line per run: its workdir, epochs and distillation terms (whether it is done)."""
    def terms(config):
        return ", ".join(f"{term} (weight {entry.get('weight', 1.0)})"
                         for term, entry in config.distill.items()) or "-"
    return "\n".join(f"{run.workdir}  {run.config.num_epochs} epochs  distill: "
                     f"{terms(run.config)}{'  (done)' if run.done else ''}" for run in runs)


def default_workdir(config: ml_collections.ConfigDict, config_name: str) -> str:
    """workdirs/experiments/<grid>_<scale> for a grid, workdirs/<config file> otherwise."""
    if kind(config) == "grid":
        return os.path.join("workdirs", "experiments",
                            "_".join(filter(None, (config.name, config.scale))))
    return os.path.join("workdirs", config_name)


# ---------------------------------------------------------------------------------------------
# Tables.

def _read_summary(workdir: str) -> dict[str, Any]:
    with open(os.path.join(workdir, "summary.json")) as f:
        return json.load(f)


def _sample_std(values: np.ndarray) -> float | None:
    """The spread a new seed would show (ddof=1); None for a single seed, which has none."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def aggregate(config: ml_collections.ConfigDict,
              results: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """row -> column -> {seeds, last/best mean and std (in %), paper} over the cells done."""
    table: dict[str, dict[str, Any]] = {}
    for row in config.table.rows:
        for column in config.table.columns:
            done = [r for r in results if r["row"] == row and r["column"] == column]
            if not done:
                continue
            last = 100 * np.array([r["final_test_accuracy"] for r in done])
            best = 100 * np.array([r["best_test_accuracy"] for r in done])
            paper = config.table.paper.get(row, {}).get(column)
            table.setdefault(row, {})[column] = {
                "seeds": [r["seed"] for r in done],
                "last_mean": float(last.mean()), "last_std": _sample_std(last),
                "best_mean": float(best.mean()), "best_std": _sample_std(best),
                "paper": paper}
    return table


def markdown(config: ml_collections.ConfigDict, table: dict[str, dict[str, Any]],
             command: str) -> str:
    """The table: per cell, last-epoch mean +- std over seeds / best-epoch mean (paper)."""
    rows = config.table.rows
    columns = [c for c in config.table.columns if any(c in table.get(r, {}) for r in rows)]
    lines = [f"# {config.title}", "", f"Scale: {config.scale}. Made by `{command}`.", "",
             "Each cell: test accuracy (%) of the last epoch, mean +- sample std over seeds (none "
             "for one seed) / "
             "mean of each seed's best epoch [n seeds] (the paper's number, where transcribed).",
             "", "| method | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for row in rows:
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
    if config.notes:
        lines += ["", config.notes]
    return "\n".join(lines) + "\n"


def grid_report(config: ml_collections.ConfigDict, runs: Sequence[Run], workdir: str,
                command: str) -> dict[str, Any]:
    """Rewrites config.results (JSON) and the markdown beside it from every cell of the whole
    table (all rows and columns; the table's seeds and those run) finished in `workdir`, so
    running a few rows adds them to the grid's table."""
    seeds = sorted(set(config.table.seeds) | {r.seed for r in runs})
    results = []
    for row in config.table.rows:
        for column in config.table.columns:
            for seed in seeds:
                cell_dir = os.path.join(workdir, row, column, f"seed{seed}")
                if os.path.exists(os.path.join(cell_dir, "summary.json")):
                    summary = _read_summary(cell_dir)
                    results.append({
                        "row": row, "column": column, "seed": seed,
                        "final_test_accuracy": summary["final_test_accuracy"],
                        "best_test_accuracy": summary["best_test_accuracy"],
                        "epochs": summary["epochs"], "workdir": cell_dir})
    table = aggregate(config, results)
    report = {"grid": config.name, "title": config.title, "scale": config.scale,
              "command": command, "cells": results, "table": table}
    os.makedirs(os.path.dirname(os.path.abspath(config.results)), exist_ok=True)
    write_atomically(config.results, json.dumps(report, indent=2))
    write_atomically(os.path.splitext(config.results)[0] + ".md",
                     markdown(config, table, command))
    return report


def accuracy_table(summaries: dict[str, dict[str, Any]],
                   descriptions: dict[str, str] | None = None) -> str:
    """A markdown table of final and best test accuracy per run, and of each distillation
    term's loss where it has terms: at the first step (before any update; the first epoch's
    mean for runs that did not record it) and the mean over the last epoch."""
    descriptions = descriptions or {}
    with_terms = any(s.get("term_losses") for s in summaries.values())
    header = "| run | what | final test acc | best test acc |"
    lines = [header + (" term loss: first step -> last epoch |" if with_terms else ""),
             "|---|---|---|---|" + ("---|" if with_terms else "")]
    for name, s in summaries.items():
        line = (f"| {name} | {descriptions.get(name, '')} | "
                f"{100 * s['final_test_accuracy']:.2f} | {100 * s['best_test_accuracy']:.2f} |")
        if with_terms:
            runs = [(stage, summary["term_losses"])
                    for stage, summary in s.get("stages", {}).items()]
            runs.append(("", s.get("term_losses", {})))
            line += " " + ", ".join(
                f"{term}{f' ({stage})' if stage else ''}: "
                f"{v['first_epoch'] if v.get('first_step') is None else v['first_step']:.4g} -> "
                f"{v['last_epoch']:.4g}" for stage, losses in runs for term, v in losses.items()
            ) + " |"
        lines.append(line)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Running.

@dataclasses.dataclass
class Outcome:
    summaries: dict[str, dict[str, Any]]  # run name -> summary, for every run of the config
    report: dict[str, Any] | None         # a grid's results (as written to config.results)
    text: str                             # what to print at the end


def run(config: ml_collections.ConfigDict, workdir: str, command: str = "",
        train_fn: TrainFn | None = None, runs: Sequence[Run] | None = None,
        together_fn: TogetherFn | None = None) -> Outcome:
    """Runs the config's runs not yet finished, in order, and says how they did. A grid's
    cells that see the same batches train together, `config.runs_per_step` at a time."""
    if train_fn is None:
        train_fn, default_together = _default_train_fns()
        together_fn = together_fn or default_together
    if together_fn is None:  # a train_fn alone: the runs of a group one after another
        def together_fn(configs, workdirs):
            return [train_fn(c, w) for c, w in zip(configs, workdirs)]
    runs = list(runs if runs is not None else expand(config, workdir))
    grid = kind(config) == "grid"
    check_teachers(runs, config.get("teacher_hint", "") if grid else "")
    summaries, position = {}, {id(r): i + 1 for i, r in enumerate(runs)}
    for r in runs:
        if r.done:
            summaries[r.name] = _read_summary(r.workdir)
            print(f"[{position[id(r)]}/{len(runs)}] {r.label()}: finished earlier "
                  f"({r.workdir}/summary.json)", flush=True)
    # Pipelines run in order (a job may teach the next); a grid's cells are independent.
    to_run = [r for r in runs if not r.done]
    size = max(1, int(config.get("runs_per_step") or 1)) if grid else 1
    for group in step_groups(to_run, size) if size > 1 else [[r] for r in to_run]:
        for r in group:
            print(f"[{position[id(r)]}/{len(runs)}] {r.label()}: training in {r.workdir}"
                  + (f" (in one step with {len(group) - 1} more)" if len(group) > 1 else ""),
                  flush=True)
        if len(group) == 1:
            done = [train_fn(group[0].config, group[0].workdir)]
        else:
            done = together_fn([r.config for r in group], [r.workdir for r in group])
        for r, summary in zip(group, done):
            summaries[r.name] = summary
            print(f"[{position[id(r)]}/{len(runs)}] {r.label()}: {summary['epochs']} epochs, "
                  f"final test accuracy {100 * summary['final_test_accuracy']:.2f}%", flush=True)
        if grid:
            grid_report(config, runs, workdir, command)
    summaries = {r.name: summaries[r.name] for r in runs}  # in the config's order
    if grid:
        report = grid_report(config, runs, workdir, command)
        return Outcome(summaries, report, markdown(config, report["table"], command) +
                       f"\n{len(report['cells'])} cells done; wrote {config.results} and its .md")
    if kind(config) == "pipeline":
        return Outcome(summaries, None, accuracy_table(
            summaries, dict(config.get("descriptions") or {})))
    return Outcome(summaries, None, json.dumps(summaries[""], indent=2))
