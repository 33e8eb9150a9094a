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

A grid with `selection="validation"` follows the VID paper's protocol in two phases. Search:
each row's candidate values (`search`, see `vid_jax.search`) train on the training part of a
per-class validation split of the cell's images (`validation_fraction`), in
`workdir/search/<row>/<column>/<values>/seed<k>` for the `search_seeds`; the candidate with
the highest last-epoch validation accuracy (mean over those seeds) is chosen. Final: the
chosen values train with the grid's `seeds` in `workdir/<row>/<column>/seed<k>`, on all the
cell's images (`final_data="all"`) or on the same training part (`"split"`), and the table
reports their last-epoch test accuracy with the chosen values beside it. Nothing is chosen
on the test set.

One resume rule for all: a run whose summary.json exists is finished and is read, not run
again (a search run that diverged is recorded so, in `diverged.json`, and not run again);
an interrupted run resumes from its latest checkpoint (`train_and_evaluate` does that).
After every group of runs of a grid, its results JSON and markdown table are rewritten, so
an interrupted grid still leaves a table of what is done.

In a job of several processes (`vid_jax.distributed`), every process runs the same runs; the
first one writes the reports, `diverged.json` and what `--restart` clears.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np
from ml_collections.config_dict import placeholder

from vid_jax import checkpoints, distributed, search
from vid_jax.config_base import check_config
from vid_jax.metric_writer import write_atomically
from vid_jax.workdir import (
    check_not_in_use,
    check_resume,
    check_writable,
    clear_outputs,
    config_changes,
    locked,
)

TrainFn = Callable[[ml_collections.ConfigDict, str], dict[str, Any]]
# Several runs in one shared step: (configs, workdirs) -> their summaries.
TogetherFn = Callable[[Sequence[ml_collections.ConfigDict], Sequence[str]], list[dict[str, Any]]]


def _default_train_fns() -> tuple[TrainFn, TogetherFn]:
    # The one place the runner names the trainer (imported late: JAX starts with it).
    from vid_jax.training import train_and_evaluate, train_together
    return train_and_evaluate, train_together


# ---------------------------------------------------------------------------------------------
# Grid configs.

# A grid's `selection`: "none" (the plain grid: fixed values, nothing chosen) or
# "validation" (the paper's protocol). "test" is refused: nothing is chosen on the test set.
SELECTIONS = ("none", "validation")
# What the final runs of the protocol train on: all of the cell's images, or the training part
# of the search's validation split.
FINAL_DATA = ("all", "split")
DIVERGED = "diverged.json"  # written in a search run's workdir when its loss diverged


def grid_config(name: str, title: str, cell: ml_collections.ConfigDict,
                rows: Sequence[str], columns: Mapping[str, Mapping[str, Any]], *,
                terms: Mapping[str, Mapping[str, Any]],
                teacher: ml_collections.ConfigDict | None = None,
                train_images: Mapping[str, int] | None = None,
                seeds: Sequence[int] = (0, 1), seed_fields: Sequence[str] = ("seed",),
                scale: str = "", images_per_cell: int | None = None,
                min_epochs: int | None = None,
                paper: Mapping[str, Mapping[str, float]] | None = None, notes: str = "",
                teacher_hint: str = "", results: str | None = None,
                runs_per_step: int = 8, named_rows: Mapping[str, Sequence[str]] | None = None,
                optional_rows: Sequence[str] = (), selection: str = "none",
                search_space: Mapping[str, Mapping[str, Any]] | None = None,
                validation_fraction: float = 0.2, search_seeds: Sequence[int] = (0,),
                final_data: str = "all",
                row_changes: Mapping[str, Mapping[str, Any]] | None = None
                ) -> ml_collections.ConfigDict:
    """A grid: the config a table of the paper is. Its fields, which overrides may change:

      rows, columns, seeds  the cells to run: comma-separated names and seeds (default: every
                            row but the `optional_rows`, every column, the table's seeds)
      cell                  the run config every cell starts from
      terms                 config.distill entries; a row's terms are its name split on "+"
                            ("student": none) unless `named_rows` names them, so
                            `terms.vid_i.weight` reaches every row with VID-I
      teacher               config.teacher of the rows with terms
      images_per_cell,      when images_per_cell is set, a cell whose num_epochs is None
      min_epochs            trains max(min_epochs, round(images_per_cell / its column's
                            train_images)) epochs; then eval_every_epochs (None:
                            num_epochs // 10) and checkpoint_every_epochs (None: as
                            eval_every_epochs)
      results               the results JSON (the markdown table goes beside it)
      runs_per_step         at most this many cells that see the same batches (the rows of
                            one column and seed, a row's candidate values) train together in
                            one jitted step, which computes the teacher's forward once
                            (`training.train_together`); 1 trains each cell alone
      selection             "none": every cell trains the values it is given; "validation":
                            the paper's protocol (the module's docstring), with
      search                term or row -> field -> candidate values (`vid_jax.search`)
      validation_fraction   of every class of a cell's images, held out to rank candidates
      search_seeds          the seeds the candidates train with (comma-separated)
      final_data            "all" (the final runs train on all the cell's images) or "split"
      table                 the whole grid in its order: rows, columns, seeds; each row's
                            terms; per column its changes to the cell and its train_images;
                            row_changes (a row's changes to the cell beyond its terms, as the
                            fine-tuned row's init_from); seed_fields (set to the cell's seed);
                            paper (row -> column -> the paper's number)
    """
    columns = dict(columns)
    terms_of = {row: tuple((named_rows or {}).get(row, _split_row(row))) for row in rows}
    unknown_optional = [r for r in optional_rows if r not in rows]
    if unknown_optional:
        raise ValueError(f"Grid {name}: optional rows {unknown_optional} are not rows.")
    config = ml_collections.ConfigDict()
    config.name, config.title, config.notes, config.scale = name, title, notes, scale
    config.rows = ",".join(r for r in rows if r not in optional_rows)
    config.columns = ",".join(columns)
    config.seeds = ",".join(str(s) for s in seeds)
    config.cell = cell
    config.terms = ml_collections.ConfigDict({t: dict(e) for t, e in terms.items()})
    config.teacher = teacher or ml_collections.ConfigDict(dict(model=None, workdir=None))
    config.teacher_hint = teacher_hint
    config.images_per_cell = images_per_cell
    config.min_epochs = placeholder(int) if min_epochs is None else min_epochs
    config.results = results or os.path.join("results", f"{name}_{scale or 'grid'}.json")
    config.runs_per_step = runs_per_step
    config.selection = selection
    config.search = ml_collections.ConfigDict(
        {k: dict(v) for k, v in (search_space or {}).items()})
    config.validation_fraction = validation_fraction
    config.search_seeds = ",".join(str(s) for s in search_seeds)
    config.final_data = final_data
    config.table = ml_collections.ConfigDict(dict(
        rows=tuple(rows), columns=tuple(columns), seeds=tuple(seeds), row_terms=terms_of,
        changes={c: dict(changes) for c, changes in columns.items()},
        row_changes={r: dict(changes) for r, changes in (row_changes or {}).items()},
        train_images=dict(train_images or {}), seed_fields=tuple(seed_fields),
        paper={r: dict(by_column) for r, by_column in (paper or {}).items()}))
    for row in rows:
        unknown = [t for t in terms_of[row] if t not in config.terms]
        if unknown:
            raise ValueError(f"Grid {name}: row {row!r} has terms {unknown} that are not in "
                             f"its terms ({', '.join(config.terms)}).")
    return config


def _split_row(row: str) -> list[str]:
    return [] if row == "student" else row.split("+")


def row_terms(row: str, config: ml_collections.ConfigDict | None = None) -> list[str]:
    """A grid row's distillation terms: those the grid's table names for it, else its name
    split on "+": "kd+vid_i" -> [kd, vid_i]; "student" -> []."""
    if config is not None and row in config.table.get("row_terms", {}):
        return list(config.table.row_terms[row])
    return _split_row(row)


def epochs_per_cell(images_per_cell: int, train_images: int, min_epochs: int | None) -> int:
    """The small scales' rule: about `images_per_cell` training images, and every image seen
    at least `min_epochs` times (at least once)."""
    return max(min_epochs or 1, round(images_per_cell / train_images))


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
    """The run config of one cell: the cell base, the column's and the row's changes, the row's
    terms (and the teacher where it has any), the seed, and the epochs of the images per cell."""
    cell = copy.deepcopy(config.cell)
    cell.unlock()
    _update(cell, config.table.changes[column])
    _update(cell, config.table.get("row_changes", {}).get(row, {}))
    if row_terms(row, config):
        cell.teacher = copy.deepcopy(config.teacher)
    for term in row_terms(row, config):
        cell.distill[term] = copy.deepcopy(config.terms[term])
    for field in config.table.seed_fields:
        _set_path(cell, field, seed)
    if config.images_per_cell and cell.num_epochs is None:
        cell.num_epochs = epochs_per_cell(config.images_per_cell,
                                          config.table.train_images[column],
                                          config.get("min_epochs"))
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
    # The protocol's phase ("search" or "final"; "" otherwise) and the run's values of the
    # row's search space: a candidate's, or the chosen ones (None: not chosen yet).
    phase: str = ""
    values: Mapping[str, Any] | None = None
    space: Mapping[str, tuple[Any, ...]] | None = None  # a final run's row's search space

    @property
    def diverged(self) -> bool:
        return self.phase == "search" and os.path.exists(os.path.join(self.workdir, DIVERGED))

    reopened: bool = False  # finished, but its config changed in allowed fields

    @property
    def done(self) -> bool:
        return not self.reopened and (
            os.path.exists(os.path.join(self.workdir, "summary.json")) or self.diverged)

    def label(self) -> str:
        return self.name or self.workdir


def _cell_name(row: str, column: str, seed: int) -> str:
    return f"{row}/{column}/seed{seed}"


def expand(config: ml_collections.ConfigDict, workdir: str) -> list[Run]:
    """The runs of a config, in order (see the module's docstring)."""
    if kind(config) == "grid":
        rows, columns, seeds = _selection(config)
        if _protocol(config, rows, columns):
            return ([r for row in rows for column in columns
                     for r in _search_runs(config, workdir, row, column)]
                    + [_final_run(config, workdir, row, column, seed)
                       for row in rows for column in columns for seed in seeds])
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


# ---------------------------------------------------------------------------------------------
# The protocol: a search on validation accuracy, then the final runs.

def _protocol(config: ml_collections.ConfigDict, rows: Sequence[str] = (),
              columns: Sequence[str] = ()) -> bool:
    """Whether a grid follows the protocol; checks its fields (and, for the `rows` and
    `columns` to run, the validation split) and fails on bad input with one ValueError."""
    selection = config.get("selection", "none")
    if selection == "test":
        raise ValueError("--config.selection=test: a grid never chooses on the test set (not "
                         "the hyper-parameters, not an epoch, not a checkpoint); use "
                         "validation (--config.validation_fraction of every class held out "
                         "from the training images) or none.")
    if selection not in SELECTIONS:
        raise ValueError(f"--config.selection={selection}: choose one of "
                         f"{', '.join(SELECTIONS)}.")
    if selection == "none":
        if config.get("search"):
            raise ValueError("--config.search: the grid chooses nothing (selection=none); set "
                             "--config.selection=validation to search on a validation split.")
        return False
    if config.final_data not in FINAL_DATA:
        raise ValueError(f"--config.final_data={config.final_data}: choose one of "
                         f"{', '.join(FINAL_DATA)}.")
    _search_seeds(config)
    search.check_search(config.search, {r: row_terms(r, config) for r in config.table.rows},
                        config.terms)
    fraction = config.validation_fraction
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"--config.validation_fraction={fraction}: selection=validation needs "
                         "a fraction in (0, 1) of every class held out for validation.")
    for column in columns:
        data = grid_cell(config, rows[0], column, 0).data
        m = data.get("images_per_class")
        if m is None:  # all of a class: the data layer checks the split when it reads them
            continue
        held_out = max(1, int(fraction * m + 0.5))  # as vid_jax.data.subsets.holdout_split
        if m < 2:
            raise ValueError(f"Column {column} has {m} image per class: a validation split "
                             "needs at least 2 (selection=validation).")
        if held_out >= m:
            raise ValueError(
                f"--config.validation_fraction={fraction} holds out {held_out} of the {m} "
                f"images of every class in column {column}, which leaves a class with no "
                f"training image; use a fraction under {(m - 0.5) / m:.3g}.")
        labelled = data.get("labels_per_class")
        if labelled is not None and labelled > m - held_out:
            raise ValueError(
                f"--config.validation_fraction={fraction} leaves {m - held_out} training "
                f"images per class in column {column}, fewer than its {labelled} labelled.")
    return True


def _search_seeds(config: ml_collections.ConfigDict) -> list[int]:
    try:
        seeds = [int(s) for s in str(config.search_seeds).split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds:
        raise ValueError(f"--config.search_seeds={config.search_seeds}: give comma-separated "
                         "integers, e.g. 0 or 0,1.")
    return seeds


def search_space(config: ml_collections.ConfigDict, row: str) -> search.Space:
    """A row's search space: "term.field" -> candidate values (`vid_jax.search`)."""
    return search.row_space(config.search, row, row_terms(row, config), list(config.terms),
                            list(config.table.rows))


def _search_cell(config: ml_collections.ConfigDict, row: str, column: str, seed: int,
                 values: search.Values) -> ml_collections.ConfigDict:
    cell = grid_cell(config, row, column, seed)
    search.apply(cell, values)
    cell.data.validation_fraction = config.validation_fraction
    return cell


def _search_dir(workdir: str, row: str, column: str, values: search.Values, seed: int) -> str:
    return os.path.join(workdir, "search", row, column, search.candidate_name(values),
                        f"seed{seed}")


def _search_runs(config: ml_collections.ConfigDict, workdir: str, row: str,
                 column: str) -> list[Run]:
    """A row's candidates in a column, for every search seed; none for a row whose space has
    one candidate or none (its values are fixed)."""
    candidates = search.candidates(search_space(config, row))
    if len(candidates) < 2:
        return []
    return [Run(f"search/{row}/{column}/{search.candidate_name(values)}/seed{seed}",
                _search_dir(workdir, row, column, values, seed),
                _search_cell(config, row, column, seed, values), row, column, seed,
                phase="search", values=values)
            for values in candidates for seed in _search_seeds(config)]


def search_result(config: ml_collections.ConfigDict, workdir: str, row: str,
                  column: str) -> dict[str, Any]:
    """What the search of a row in a column found so far: each candidate's last-epoch
    validation accuracy per search seed (or that it diverged), and the chosen values once
    every candidate has finished (None before; {} for a row with nothing to search)."""
    candidates = search.candidates(search_space(config, row))
    if len(candidates) < 2:
        return {"row": row, "column": column, "candidates": [],
                "chosen": candidates[0] if candidates else {}}
    seeds, entries, complete = _search_seeds(config), [], True
    for values in candidates:
        accuracies, diverged = {}, []
        for seed in seeds:
            run_dir = _search_dir(workdir, row, column, values, seed)
            if os.path.exists(os.path.join(run_dir, "summary.json")):
                summary = _read_summary(run_dir)
                if "final_validation_accuracy" not in summary:
                    raise ValueError(f"{run_dir}/summary.json has no validation accuracy: the "
                                     "run did not hold out a validation split.")
                accuracies[seed] = summary["final_validation_accuracy"]
            elif os.path.exists(os.path.join(run_dir, DIVERGED)):
                diverged.append(seed)
            else:
                complete = False
        mean = (float(np.mean(list(accuracies.values())))
                if accuracies and not diverged else None)
        entries.append({"values": values, "name": search.candidate_name(values),
                        "validation_accuracy": {str(s): a for s, a in accuracies.items()},
                        "diverged_seeds": diverged, "mean_validation_accuracy": mean})
    chosen = None
    if complete:
        chosen = search.choose([(e["values"], e["mean_validation_accuracy"]) for e in entries])
    return {"row": row, "column": column, "candidates": entries, "complete": complete,
            "chosen": chosen}


def _final_run(config: ml_collections.ConfigDict, workdir: str, row: str, column: str,
               seed: int) -> Run:
    """A final run with the values the search chose, or (not chosen yet) the row's own."""
    values = search_result(config, workdir, row, column)["chosen"]
    cell = grid_cell(config, row, column, seed)
    if values:
        search.apply(cell, values)
    if config.final_data == "split":
        cell.data.validation_fraction = config.validation_fraction
    return Run(_cell_name(row, column, seed), os.path.join(workdir, row, column, f"seed{seed}"),
               cell, row, column, seed, phase="final", values=values,
               space=search_space(config, row))


def _resolve(config: ml_collections.ConfigDict, workdir: str, final: Run) -> Run:
    """A final run with the search's choice, which must exist; a finished final run must have
    trained with it."""
    resolved = _final_run(config, workdir, final.row, final.column, final.seed)
    if resolved.values is None:
        result = search_result(config, workdir, final.row, final.column)
        if not result["complete"]:
            raise RuntimeError(f"The search of row {final.row!r} in column {final.column} has "
                               "not finished, so its final runs cannot start.")
        tried = ", ".join(e["name"] for e in result["candidates"])
        raise ValueError(f"Every candidate of row {final.row!r} in column {final.column} "
                         f"diverged in the search ({tried}); search smaller values with "
                         "--config.search.<term>.<field> in a new workdir.")
    _check_recorded(resolved)
    return resolved


def _check_recorded(run: Run) -> None:
    """A final run that finished must have trained the values chosen now (a search run again
    with other candidates may choose others)."""
    path = os.path.join(run.workdir, "config.json")
    if not run.done or not run.values or not os.path.exists(path):
        return
    with open(path) as f:
        recorded = json.load(f).get("distill", {})
    for key, value in run.values.items():
        term, field = key.split(".", 1)
        had = recorded.get(term, {}).get(field)
        if had != value:
            raise ValueError(
                f"{run.workdir} finished with {key}={had!r}, but the search now chooses "
                f"{key}={value!r} ({search.candidate_name(run.values)}): give the grid another "
                "--workdir, or remove that run's workdir to train it again.")


def check_overrides(config: ml_collections.ConfigDict, overrides: Iterable[str],
                    runs: Sequence[Run]) -> None:
    """An override that reaches no run would change nothing: an error naming it.

    `overrides` are the overridden field paths (`terms.vid_i.weight`); config_flags already
    refuses fields the config does not have."""
    for path in overrides:
        parts = path.split(".")
        if kind(config) == "grid":
            rows = {r.row for r in runs}
            terms = {t for r in runs for t in row_terms(r.row, config)}
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
            protocol_fields = ("search", "validation_fraction", "search_seeds", "final_data")
            if parts[0] in protocol_fields and config.get("selection") != "validation":
                raise ValueError(f"--config.{path}: the grid chooses nothing "
                                 "(selection=none); add --config.selection=validation.")
            if parts[0] == "search" and len(parts) > 1 and parts[1] not in terms | rows:
                raise ValueError(f"--config.{path}: no row to run has the term or is the row "
                                 f"{parts[1]!r} (rows: {config.rows}).")
        elif kind(config) == "pipeline" and parts[0] == "jobs" and len(parts) > 1 \
                and parts[1] not in config.job_order:
            raise ValueError(f"--config.{path}: job {parts[1]!r} is not in config.job_order "
                             f"({', '.join(config.job_order)}).")


def check_teachers(runs: Sequence[Run], how_to_train: str = "",
                   chosen_on_validation: bool = False) -> None:
    """Fails before anything trains if a run to train distills from a teacher that has no
    checkpoint and that no earlier run of the same config trains; with
    `chosen_on_validation`, also if the teacher's checkpoint was chosen on the test set."""
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
            if chosen_on_validation:
                _check_teacher_chosen_on_validation(teacher.workdir)
        if not run.done:
            _check_start_points(run.config, earlier, how_to_train)
        earlier.add(os.path.abspath(run.workdir))


def _check_start_points(config: ml_collections.ConfigDict, earlier: set[str],
                        how_to_train: str) -> None:
    """A teacher's weights file, or a student's `init_from` (a weights file, or a run's
    workdir that no earlier run of the config trains), that does not exist: one error before
    anything trains (a grid's cells without them would train first)."""
    teacher, init_from = config.get("teacher"), config.get("init_from")
    if teacher and teacher.get("model") and teacher.get("weights") \
            and not os.path.isfile(teacher.weights):
        raise FileNotFoundError(f"config.teacher.weights: {teacher.weights} does not exist. "
                                f"{how_to_train}".strip())
    if not init_from:
        return
    if init_from.get("weights") and not os.path.isfile(init_from.weights):
        raise FileNotFoundError(f"config.init_from.weights: {init_from.weights} does not exist.")
    workdir = init_from.get("workdir")
    if workdir and os.path.abspath(workdir) not in earlier \
            and not os.path.isdir(os.path.join(workdir, "best")):
        raise FileNotFoundError(f"config.init_from.workdir: {workdir} has no checkpoint "
                                "(best/); train that run first, or point it at one that did.")


def _check_teacher_chosen_on_validation(teacher_workdir: str) -> None:
    """The teacher's best/ was chosen on a validation split: its summary says so or, while it
    trains, its config holds one out."""
    summary = os.path.join(teacher_workdir, "summary.json")
    config = os.path.join(teacher_workdir, "config.json")
    if os.path.exists(summary):
        with open(summary) as f:
            chosen_by = json.load(f).get("selected_by")
        what = f"{summary} says selected_by={chosen_by}"
    elif os.path.exists(config):
        with open(config) as f:
            fraction = json.load(f).get("data", {}).get("validation_fraction") or 0
        chosen_by = "validation" if fraction > 0 else "test"
        what = f"{config} has data.validation_fraction={fraction}"
    else:
        raise ValueError(f"The teacher in {teacher_workdir} has neither summary.json nor "
                         "config.json, so it cannot be told whether its checkpoint was "
                         "chosen on the test set; selection=validation needs one that was not.")
    if chosen_by not in ("validation", "last"):
        raise ValueError(f"The teacher in {teacher_workdir} chose its checkpoint on the test set "
                         f"({what}); selection=validation chooses nothing on the test set: "
                         "use a teacher trained with a validation split (e.g. "
                         "configs/cifar10_wrn40_2.py:lossless) via --config.teacher.workdir, "
                         "or --config.selection=none.")


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


def _terms_line(run: Run) -> str:
    """A run's terms and their values; a final run's searched fields say "chosen"."""
    def shown(term: str, field: str, value: Any) -> str:
        key = f"{term}.{field}"
        if run.phase == "final" and run.space and len(run.space.get(key, ())) > 1:
            if run.values is None:
                return f"{field}: chosen from " + ", ".join(
                    search.candidate_name({key: v}).split("=", 1)[1] for v in run.space[key])
            return f"{field} {value} (chosen)"
        return f"{field} {value}"

    def fields(term: str, entry) -> list[str]:
        searched = [key.split(".", 1)[1] for key in (run.space or run.values or {})
                    if key.startswith(f"{term}.")]
        return [shown(term, "weight", entry.get("weight", 1.0))] + [
            shown(term, f, entry[f]) for f in searched if f != "weight"]

    return ", ".join(f"{term} ({', '.join(fields(term, entry))})"
                     for term, entry in run.config.distill.items()) or "-"


def _stage_epochs(run: Run) -> dict[str, int]:
    """The epochs of the stages the run's terms declare, before its main stage."""
    from vid_jax import methods  # the registry imports every method: only when listing

    terms = methods.build_terms(run.config.get("distill"))
    return {s.name: s.epochs for s in methods.stages_of(terms, run.config.get("stage_epochs"))
            if s.epochs}


def _epochs(run: Run) -> int:
    return run.config.num_epochs + sum(_stage_epochs(run).values())


def describe(runs: Sequence[Run]) -> str:
    """One line per run: its workdir, epochs (a stage's before the main one's, counted in the
    totals) and distillation terms (whether it is done). The protocol's runs come under a
    heading per phase, with their counts and epochs."""
    def line(run: Run) -> str:
        state = "  (diverged)" if run.diverged else "  (done)" if run.done else ""
        stages = "".join(f" + {n} {name}" for name, n in _stage_epochs(run).items())
        return (f"{run.workdir}  {run.config.num_epochs} epochs{stages}  distill: "
                f"{_terms_line(run)}{state}")

    if not any(r.phase for r in runs):
        return "\n".join(line(run) for run in runs)
    searched = [r for r in runs if r.phase == "search"]
    final = [r for r in runs if r.phase == "final"]
    heads = {
        "search": "search: every candidate of a row's search space, trained on the images "
                  "left after holding out data.validation_fraction="
                  f"{searched[0].config.data.validation_fraction if searched else 0} of every "
                  "class; chosen: the highest last-epoch validation accuracy, mean over the "
                  "search seeds",
        "final": "final: the chosen values, trained with the grid's seeds; reported: "
                 "last-epoch test accuracy"}
    lines = []
    for phase, members in (("search", searched), ("final", final)):
        if not members:
            continue
        epochs = sum(_epochs(r) for r in members)
        lines.append(f"# {heads[phase]}: {len(members)} runs, {epochs} epochs")
        lines.extend(line(run) for run in members)
    total = sum(_epochs(r) for r in runs)
    lines.append(f"# {len(runs)} runs, {total} epochs ({sum(r.done for r in runs)} done)")
    return "\n".join(lines)


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


def _protocol_on(config: ml_collections.ConfigDict) -> bool:
    return config.get("selection", "none") == "validation"


def aggregate(config: ml_collections.ConfigDict,
              results: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """row -> column -> {seeds, last (and best) mean and std (in %), paper} over the cells
    done; under the protocol, no test-picked best, and the chosen values."""
    protocol = _protocol_on(config)
    table: dict[str, dict[str, Any]] = {}
    for row in config.table.rows:
        for column in config.table.columns:
            done = [r for r in results if r["row"] == row and r["column"] == column]
            if not done:
                continue
            last = 100 * np.array([r["final_test_accuracy"] for r in done])
            paper = config.table.paper.get(row, {}).get(column)
            cell = {"seeds": [r["seed"] for r in done],
                    "last_mean": float(last.mean()), "last_std": _sample_std(last)}
            if not protocol:
                best = 100 * np.array([r["best_test_accuracy"] for r in done])
                cell.update(best_mean=float(best.mean()), best_std=_sample_std(best))
            elif all("test_accuracy_at_best_validation" in r for r in done):
                best = 100 * np.array([r["test_accuracy_at_best_validation"] for r in done])
                cell.update(best_mean=float(best.mean()), best_std=_sample_std(best))
            cell["paper"] = paper
            if protocol:
                cell["values"] = done[0]["values"]
            table.setdefault(row, {})[column] = cell
    return table


def _optimizer_text(cell: ml_collections.ConfigDict) -> str:
    opt = cell.optimizer
    if opt.schedule == "cosine":
        decay = "cosine decay to 0"
    elif opt.schedule == "piecewise":
        decay = (f"x{opt.decay_factor:g} at epochs "
                 + "/".join(str(b) for b in opt.boundaries_epochs))
    else:
        decay = f"{opt.schedule} schedule"
    return f"batch {cell.batch_size}, {opt.name.upper()} lr {opt.learning_rate:g} {decay}"


def schedule_text(config: ml_collections.ConfigDict, columns: Sequence[str]) -> str:
    """The grid's schedule: its rule, and the epochs and steps it gives each of `columns`."""
    if config.get("images_per_cell") and config.cell.num_epochs is None:
        rule = (f"every cell trains max({config.get('min_epochs') or 1}, "
                f"round({config.images_per_cell:,} / its training images)) epochs")
    else:
        rule = "every cell trains its recipe's epochs"
    per_column = []
    for column in columns:
        cell = grid_cell(config, config.table.rows[0], column, config.table.seeds[0])
        n = config.table.train_images.get(column)
        shown = f"{column}: {cell.num_epochs} epochs"
        if n:
            shown += f" of {n:,} images, {cell.num_epochs * (n // cell.batch_size):,} steps"
        per_column.append(shown)
    return f"{rule}; {_optimizer_text(config.cell)}. " + "; ".join(per_column)


def _cell_text(c: Mapping[str, Any], best: bool) -> str:
    paper = "-" if c["paper"] is None else f"{c['paper']:.2f}"
    spread = "" if c["last_std"] is None else f" +- {c['last_std']:.2f}"
    shown = f"{c['last_mean']:.2f}{spread}"
    if best and "best_mean" in c:
        shown += f" / {c['best_mean']:.2f}"
    shown += f" [{len(c['seeds'])}] ({paper})"
    if c.get("values"):
        shown += " " + search.candidate_name(c["values"])
    return shown


def markdown(config: ml_collections.ConfigDict, table: dict[str, dict[str, Any]],
             command: str, searches: Sequence[Mapping[str, Any]] = ()) -> str:
    """The table: per cell, last-epoch mean +- std over seeds / best-epoch mean [seeds]
    (paper); under the protocol, the chosen values beside each cell and the search below."""
    rows = config.table.rows
    columns = [c for c in config.table.columns if any(c in table.get(r, {}) for r in rows)]
    lines = [f"# {config.title}", "",
             f"Scale: {config.scale}: {schedule_text(config, columns)}. "
             f"Made by `{command}`.", ""]
    if _protocol_on(config):
        lines += [_protocol_text(config), ""]
        best = config.final_data == "split"
        lines.append(
            "Each cell: test accuracy (%) of the final runs' last epoch, mean +- sample std "
            "over seeds (none for one seed)"
            + (" / mean of the test accuracy at each seed's best validation epoch" if best
               else "")
            + " [n seeds] (the paper's number, where transcribed), then the chosen values "
              "(none where the row's values are fixed).")
    else:
        best = True
        lines.append(
            "Each cell: test accuracy (%) of the last epoch, mean +- sample std over seeds "
            "(none for one seed) / mean of each seed's highest test accuracy over its "
            "evaluated epochs (the test set picks that epoch: a bound, not a result) "
            "[n seeds] (the paper's number, where transcribed).")
    lines += ["", "| method | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for row in rows:
        if row not in table:
            continue
        cells = [_cell_text(table[row][column], best) if column in table[row] else ""
                 for column in columns]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    shown = [s for s in searches if s["candidates"]]
    if shown:
        lines += ["", "Search: each candidate's last-epoch validation accuracy (%), mean over "
                  "the search seeds (diverged: its loss did not stay finite); the chosen one "
                  "in bold.", "", "| method | column | candidates |", "|---|---|---|"]
        for s in shown:
            chosen = search.candidate_name(s["chosen"]) if s["chosen"] else None
            entries = []
            for e in s["candidates"]:
                mean = e["mean_validation_accuracy"]
                text = (f"{e['name']}: " + ("diverged" if e["diverged_seeds"] else
                                            "-" if mean is None else f"{100 * mean:.2f}"))
                entries.append(f"**{text}**" if e["name"] == chosen else text)
            lines.append(f"| {s['row']} | {s['column']} | " + "; ".join(entries) + " |")
    if config.notes:
        lines += ["", config.notes]
    return "\n".join(lines) + "\n"


def _protocol_text(config: ml_collections.ConfigDict) -> str:
    seeds = ", ".join(str(s) for s in _search_seeds(config))
    final = ("all of the column's images" if config.final_data == "all" else
             "the same training part of the split (its validation images held out)")
    return (f"Protocol (the paper's, Sec. 4.1): for each row and column, every candidate of "
            f"the row's search space trained on the images left after holding out "
            f"{100 * config.validation_fraction:g}% of every class (the column's images of "
            f"search seed {seeds}), and the candidate with the highest last-epoch validation "
            f"accuracy, mean over the search seeds, was chosen. The chosen values then trained "
            f"with seeds {config.seeds} on {final}. Nothing was chosen on the test set: not a "
            f"value, not an epoch, not a checkpoint.")


def _trained_values(run_dir: str, space: search.Space,
                    chosen: search.Values | None) -> search.Values | None:
    """The searched fields' values a final run trained with (its config.json), else the
    values chosen now."""
    path = os.path.join(run_dir, "config.json")
    if not space or not os.path.exists(path):
        return chosen if space else {}
    with open(path) as f:
        distill = json.load(f).get("distill", {})
    return {key: distill.get(key.split(".", 1)[0], {}).get(key.split(".", 1)[1])
            for key in space}


def grid_report(config: ml_collections.ConfigDict, runs: Sequence[Run], workdir: str,
                command: str) -> dict[str, Any]:
    """Rewrites config.results (JSON) and the markdown beside it from every cell of the whole
    table (all rows and columns; the table's seeds and those run) finished in `workdir`, so
    running a few rows adds them to the grid's table; under the protocol, with what every
    search found."""
    protocol = _protocol_on(config)
    seeds = sorted(set(config.table.seeds)
                   | {r.seed for r in runs if r.phase != "search" and r.seed is not None})
    searches, chosen = [], {}
    if protocol:
        for row in config.table.rows:
            for column in config.table.columns:
                result = search_result(config, workdir, row, column)
                chosen[row, column] = result["chosen"]
                if any(e["validation_accuracy"] or e["diverged_seeds"]
                       for e in result["candidates"]):
                    searches.append(result)
    results = []
    for row in config.table.rows:
        for column in config.table.columns:
            for seed in seeds:
                cell_dir = os.path.join(workdir, row, column, f"seed{seed}")
                if not os.path.exists(os.path.join(cell_dir, "summary.json")):
                    continue
                summary = _read_summary(cell_dir)
                cell = {"row": row, "column": column, "seed": seed,
                        "final_test_accuracy": summary["final_test_accuracy"]}
                if not protocol:
                    cell["best_test_accuracy"] = summary["best_test_accuracy"]
                elif summary.get("selected_by") == "validation":
                    cell["test_accuracy_at_best_validation"] = \
                        summary["test_accuracy_at_best_selection"]
                cell.update(epochs=summary["epochs"], workdir=cell_dir)
                if protocol:
                    cell["values"] = _trained_values(cell_dir, search_space(config, row),
                                                     chosen[row, column])
                results.append(cell)
    table = aggregate(config, results)
    report = {"grid": config.name, "title": config.title, "scale": config.scale,
              "command": command}
    if protocol:
        report.update(selection="validation", validation_fraction=config.validation_fraction,
                      search_seeds=_search_seeds(config), final_data=config.final_data,
                      search=searches)
    report.update(cells=results, table=table)
    if distributed.is_primary():
        os.makedirs(os.path.dirname(os.path.abspath(config.results)), exist_ok=True)
        write_atomically(config.results, json.dumps(report, indent=2))
        write_atomically(os.path.splitext(config.results)[0] + ".md",
                         markdown(config, table, command, searches))
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


def _summary_of(run: Run) -> dict[str, Any]:
    if run.diverged:
        with open(os.path.join(run.workdir, DIVERGED)) as f:
            return json.load(f)
    return _read_summary(run.workdir)


def _outcome_line(run: Run, summary: Mapping[str, Any]) -> str:
    if "diverged" in summary:
        return "diverged (left out of the search)"
    if run.phase == "search":  # a search run shows only what ranks it
        return (f"{summary['epochs']} epochs, last-epoch validation accuracy "
                f"{100 * summary['final_validation_accuracy']:.2f}%")
    return (f"{summary['epochs']} epochs, final test accuracy "
            f"{100 * summary['final_test_accuracy']:.2f}%")


def _owner(runs: Sequence[Run], workdir: str | None) -> Run | None:
    """The run whose workdir holds `workdir` (a run's own, or one of its stages')."""
    if not workdir:
        return None
    path = os.path.abspath(workdir)
    for run in runs:
        own = os.path.abspath(run.workdir)
        if os.path.commonpath([own, path]) == own:
            return run
    return None


def _train_group(group: Sequence[Run], train_fn: TrainFn, together_fn: TogetherFn,
                 search_phase: bool) -> dict[str, dict[str, Any]]:
    """Trains a group of runs (one shared step when several); returns name -> summary. In the
    search, a run whose loss diverges is recorded (`DIVERGED`) and the others go on."""
    results: dict[str, dict[str, Any]] = {}
    remaining = list(group)
    while remaining:
        try:
            if len(remaining) == 1:
                done = [train_fn(remaining[0].config, remaining[0].workdir)]
            else:
                done = together_fn([r.config for r in remaining],
                                   [r.workdir for r in remaining])
        except FloatingPointError as error:  # training.TrainingDiverged names its workdir
            culprit = _owner(remaining, getattr(error, "workdir", None))
            if not search_phase or culprit is None:
                raise
            results[culprit.name] = {"diverged": str(error)}
            if distributed.is_primary():
                os.makedirs(culprit.workdir, exist_ok=True)
                write_atomically(os.path.join(culprit.workdir, DIVERGED),
                                 json.dumps(results[culprit.name], indent=2))
            distributed.sync("vid_jax: divergence recorded")
            remaining.remove(culprit)
            continue
        results.update({r.name: summary for r, summary in zip(remaining, done)})
        remaining = []
    return results


def check_workdirs(runs: Sequence[Run], allow_changes: Sequence[str] = (),
                   restart: bool = False) -> set[str]:
    """Checks every run's config and workdir before anything trains (`config_base.
    check_config`, `workdir.check_writable`, `workdir.check_resume`); with `restart`, then
    clears the workdirs of runs whose config changed. Returns the workdirs of finished runs
    whose config changed in allowed fields: they train again (e.g. more epochs)."""
    from vid_jax import methods  # imported late: JAX starts with it

    reopened, to_restart = set(), []
    for r in runs:
        if r.phase == "final" and r.values is None:
            continue  # its values are chosen by the search; the trainer checks it then
        try:
            check_config(r.config)
            methods.build_terms(r.config.get("distill"))  # a term's own values
        except ValueError as error:
            raise ValueError(f"{r.label()}: {error}") from None
        check_writable(r.workdir)
        check_not_in_use(r.workdir)
        if restart and config_changes(r.workdir, r.config):
            to_restart.append(r)
        elif check_resume(r.workdir, r.config, allow_changes) and r.done:
            reopened.add(r.workdir)
    # Every process has read the workdirs: from here on the first one may change them.
    distributed.sync("vid_jax: workdirs checked")
    for r in to_restart:  # only once every run passed its checks
        if distributed.is_primary():
            with locked(r.workdir):
                clear_outputs(r.workdir)
        print(f"{r.label()}: its config changed; starting over in {r.workdir} (--restart)",
              flush=True)
    distributed.sync("vid_jax: workdirs cleared")
    return reopened


def run(config: ml_collections.ConfigDict, workdir: str, command: str = "",
        train_fn: TrainFn | None = None, runs: Sequence[Run] | None = None,
        together_fn: TogetherFn | None = None, allow_changes: Sequence[str] = (),
        restart: bool = False) -> Outcome:
    """Runs the config's runs not yet finished, in order, and says how they did. A grid's
    cells that see the same batches train together, `config.runs_per_step` at a time; under
    the protocol, the search first, then the final runs with the values it chose.

    Every run is checked before any trains: a workdir that trained under another config is
    refused unless the fields that differ are in `allow_changes` (the run then resumes under
    the new values, a finished one trains again) or `restart` starts it over."""
    if train_fn is None:
        train_fn, default_together = _default_train_fns()
        together_fn = together_fn or default_together
        if allow_changes:
            train_fn = functools.partial(train_fn, allow_changes=tuple(allow_changes))
            together_fn = functools.partial(together_fn, allow_changes=tuple(allow_changes))
    if together_fn is None:  # a train_fn alone: the runs of a group one after another
        def together_fn(configs, workdirs):
            return [train_fn(c, w) for c, w in zip(configs, workdirs)]
    runs = list(runs if runs is not None else expand(config, workdir))
    grid = kind(config) == "grid"
    protocol = any(r.phase for r in runs)
    check_teachers(runs, config.get("teacher_hint", "") if grid else "",
                   chosen_on_validation=protocol)
    for r in runs:  # a finished final run that trained other values than those chosen
        if r.phase == "final" and r.values is not None:
            _check_recorded(r)
    reopened = check_workdirs(runs, allow_changes, restart)
    runs = [dataclasses.replace(r, reopened=True) if r.workdir in reopened else r
            for r in runs]
    names = [r.name for r in runs]
    summaries, position = {}, {name: i + 1 for i, name in enumerate(names)}

    def say(r: Run, what: str) -> None:
        print(f"[{position[r.name]}/{len(runs)}] {r.label()}: {what}", flush=True)

    for r in runs:
        if r.done:
            summaries[r.name] = _summary_of(r)
            say(r, f"finished earlier ({r.workdir}/"
                   f"{DIVERGED if r.diverged else 'summary.json'})")
    size = max(1, int(config.get("runs_per_step") or 1)) if grid else 1
    phases = ([("search", [r for r in runs if r.phase == "search"]),
               ("final", [r for r in runs if r.phase == "final"])] if protocol
              else [("", runs)])
    for phase, members in phases:
        if phase == "final":  # the search is done: every final run gets the values chosen
            members = [_resolve(config, workdir, r) for r in members]
            for r in members:
                if r.values and r.seed == members[0].seed:
                    print(f"search: {r.row}/{r.column} chose "
                          f"{search.candidate_name(r.values)}", flush=True)
        # Pipelines run in order (a job may teach the next); a grid's cells are independent.
        to_run = [r for r in members if not r.done]
        for group in step_groups(to_run, size) if size > 1 else [[r] for r in to_run]:
            for r in group:
                say(r, f"training in {r.workdir}"
                       + (f" (in one step with {len(group) - 1} more)" if len(group) > 1
                          else ""))
            done = _train_group(group, train_fn, together_fn, phase == "search")
            for r in group:
                summaries[r.name] = done[r.name]
                say(r, _outcome_line(r, done[r.name]))
            if grid:
                grid_report(config, runs, workdir, command)
    summaries = {name: summaries[name] for name in names}  # in the config's order
    if grid:
        report = grid_report(config, runs, workdir, command)
        return Outcome(summaries, report,
                       markdown(config, report["table"], command, report.get("search", ()))
                       + f"\n{len(report['cells'])} cells done; wrote {config.results} and "
                         "its .md")
    if kind(config) == "pipeline":
        return Outcome(summaries, None, accuracy_table(
            summaries, dict(config.get("descriptions") or {})))
    return Outcome(summaries, None, json.dumps(summaries[""], indent=2))
