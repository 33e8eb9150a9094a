"""Hyper-parameter search spaces of a grid's rows, and the choice among their candidates.

The VID paper's protocol (Ahn et al., CVPR 2019, Sec. 4.1): "20% of the dataset provided for
training the student network was used for validation, i.e., choosing the best set of
hyper-parameters for each method. Every result was computed as the mean of accuracies over 3
runs." A grid (`vid_jax.runner`) declares, per term or per row, the values to try of the
fields of its distillation terms:

    search.<term>.<field> = (v1, v2, ...)        every row with the term
    search.<row>.<term>.<field> = (v1, ...)      that row only (a row that is not a term's
                                                 name: "kd+vid_i", "authors"), replacing the
                                                 term-level values of the fields it names

A row's space is "term.field" -> candidates; its candidates are the product of the fields'
values, in declared order. The runner trains each candidate on the training part of a
per-class validation split and keeps the one with the highest validation accuracy (`choose`).
Nothing here reads a test accuracy.
"""
from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

Space = dict[str, tuple[Any, ...]]   # "term.field" -> candidate values, in declared order
Values = dict[str, Any]              # "term.field" -> one value


def _plain(tree: Any) -> Any:
    return tree.to_dict() if isinstance(tree, ml_collections.ConfigDict) else tree


def _candidates_of(path: str, values: Any) -> tuple[Any, ...]:
    """The declared values of one field, checked: a non-empty tuple or list."""
    if not isinstance(values, (tuple, list)):
        raise ValueError(f"--config.search.{path}={values!r}: give a tuple of candidate "
                         f"values, e.g. --config.search.{path}='(1.0, 10.0)'.")
    if not values:
        raise ValueError(f"--config.search.{path} is empty: give at least one candidate "
                         "value (one value trains that value without a search).")
    return tuple(values)


def row_space(search: Mapping[str, Any], row: str, row_terms: Sequence[str],
              grid_terms: Sequence[str], rows: Sequence[str]) -> Space:
    """The search space of `row` (whose terms are `row_terms`), checked (`check_search`
    checks the whole declaration)."""
    search = _plain(search) or {}
    space: Space = {}
    for term in row_terms:
        for field, values in (search.get(term) or {}).items():
            space[f"{term}.{field}"] = _candidates_of(f"{term}.{field}", values)
    if row not in grid_terms and row in search:
        for term, fields in (search[row] or {}).items():
            if term not in row_terms:
                raise ValueError(f"--config.search.{row}.{term}: row {row!r} has no term "
                                 f"{term!r}; its terms are {', '.join(row_terms) or 'none'}.")
            for field, values in (fields or {}).items():
                space[f"{term}.{field}"] = _candidates_of(f"{row}.{term}.{field}", values)
    return space


def check_search(search: Mapping[str, Any], row_terms: Mapping[str, Sequence[str]],
                 terms: Mapping[str, Mapping[str, Any]]) -> None:
    """Bad input in a grid's search declaration, as one ValueError: a key that is neither a
    term nor a row of the grid, a row's entry for a term it does not have, a term or row with
    no fields, an empty or non-tuple list of values, duplicate values, a field the term's
    method does not take (checked by building the term with every candidate)."""
    search = _plain(search) or {}
    for key, entry in search.items():
        if key not in terms and key not in row_terms:
            raise ValueError(f"--config.search.{key}: the grid has no term or row {key!r}; "
                             f"its terms are {', '.join(terms)}, its rows "
                             f"{', '.join(row_terms)}.")
        if not entry:
            raise ValueError(f"--config.search.{key} is empty: give a field and its candidate "
                             f"values, e.g. --config.search.{key}.weight='(1.0, 10.0)'.")
        if key not in terms and not row_terms[key]:
            raise ValueError(f"--config.search.{key}: row {key!r} has no terms to search.")
    for row, its_terms in row_terms.items():
        space = row_space(search, row, its_terms, list(terms), list(row_terms))
        for path, values in space.items():
            shown = [candidate_name({path: v}) for v in values]
            if len(set(shown)) < len(shown):
                raise ValueError(f"--config.search: {path} of row {row!r} lists a value twice "
                                 f"({', '.join(shown)}).")
        _check_fields(space, terms)


def _check_fields(space: Space, terms: Mapping[str, Mapping[str, Any]]) -> None:
    """Builds each term of the space with each of its values, so that a field its method does
    not take, or a value it refuses, fails here rather than when the candidate trains."""
    from vid_jax import methods  # late: JAX starts with it (launch.py sets devices first)

    for path, values in space.items():
        term, field = path.split(".", 1)
        for value in values:
            entry = dict(_plain(terms[term]))
            entry[field] = value
            try:
                methods.build_terms({term: entry})
            except (TypeError, ValueError) as error:
                raise ValueError(f"--config.search: {path}={value!r}: {error}") from None


def candidates(space: Space) -> list[Values]:
    """Every combination of the space's values (the first field varies slowest)."""
    paths = list(space)
    return [dict(zip(paths, combo)) for combo in itertools.product(*space.values())]


def _shown(value: Any) -> str:
    return format(value, "g") if isinstance(value, float) else str(value)


def candidate_name(values: Values) -> str:
    """A candidate as a directory name and a table entry: "kd.temperature=4,vid_i.weight=10"."""
    return ",".join(f"{path}={_shown(value)}" for path, value in values.items())


def apply(cell: ml_collections.ConfigDict, values: Values) -> None:
    """Sets each "term.field" of `values` in the cell's config.distill."""
    for path, value in values.items():
        term, field = path.split(".", 1)
        cell.distill[term][field] = value


def choose(scores: Sequence[tuple[Values, float | None]]) -> Values | None:
    """The candidate with the highest score (its mean validation accuracy); None scores are
    runs that diverged. Of equal scores the first declared wins. None if every run diverged."""
    scored = [(values, score) for values, score in scores if score is not None]
    if not scored:
        return None
    best = max(score for _, score in scored)
    return next(values for values, score in scored if score == best)
