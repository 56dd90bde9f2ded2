"""Which table column feeds which feature of which input (CSV and Parquet ``--data`` files).

A column feeds one feature of an input whose row is a scalar or 1-D (``[D]``). **By name**
first: a column named ``<input>`` (scalar inputs), ``<input>[i]``, or a name given with
``--feature-names <input>=a,b,…``. **By order** when *no* column name matches: the number of
columns must equal the number of features, taken input by input in the model's order; the
header then names the features. Any other combination (a partial match, missing or extra
columns) is an error that lists both sides. ``--ignore-column`` drops columns such as labels
before matching.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from serve.baseline.model import BaselineInputError
from serve.types import TensorSpec


@dataclass(frozen=True, slots=True)
class Slot:
    """One column of one input: ``column`` is None for a scalar row."""

    tensor: str
    column: int | None


@dataclass(frozen=True, slots=True)
class TableMapping:
    columns: list[str]  # table columns read, in order
    slots: list[Slot]  # the slot each read column feeds
    feature_names: dict[str, list[str]]  # input → names taken from the header (by-order mapping only)
    by: str  # "name" | "order"


def _slots(specs: Sequence[TensorSpec]) -> list[Slot]:
    out: list[Slot] = []
    for spec in specs:
        dims = tuple(spec.dims)
        if dims == () or dims == (1,):
            out.append(Slot(spec.name, None if dims == () else 0))
        elif len(dims) == 1 and dims[0] > 0:
            out += [Slot(spec.name, i) for i in range(dims[0])]
        else:
            raise BaselineInputError(
                f"input '{spec.name}' has rows of shape {list(dims)}; a table column can only feed a scalar or "
                "fixed 1-D input. Give this input as .npy or .npz"
            )
    return out


def map_columns(
    header: Sequence[str],
    specs: Sequence[TensorSpec],
    feature_names: Mapping[str, Sequence[str]] | None = None,
    ignore: Sequence[str] = (),
) -> TableMapping:
    """Apply the mapping rule (module docstring) to a table's header."""
    slots = _slots(specs)
    given = feature_names or {}
    names = _names(slots, given)
    columns = _kept_columns(header, ignore)
    matched = [c for c in columns if c in names]
    if matched:
        return _by_name(columns, matched, names, slots)
    return _by_order(columns, slots, given)


def _names(slots: Sequence[Slot], feature_names: Mapping[str, Sequence[str]]) -> dict[str, Slot]:
    """Every column name that maps by name, and the slot it feeds."""
    names: dict[str, Slot] = {}
    for slot in slots:
        if slot.column is None:
            names[slot.tensor] = slot
        else:
            names[f"{slot.tensor}[{slot.column}]"] = slot
            if slot.column == 0 and len([s for s in slots if s.tensor == slot.tensor]) == 1:
                names[slot.tensor] = slot
    for tensor, given in feature_names.items():
        own = [s for s in slots if s.tensor == tensor]
        if not own:
            raise BaselineInputError(f"--feature-names names input '{tensor}', which the model does not have")
        if len(given) != len(own):
            raise BaselineInputError(
                f"--feature-names gives {len(given)} names for the {len(own)} columns of '{tensor}'"
            )
        names.update(zip(given, own, strict=True))
    return names


def _kept_columns(header: Sequence[str], ignore: Sequence[str]) -> list[str]:
    unknown_ignored = [c for c in ignore if c not in header]
    if unknown_ignored:
        raise BaselineInputError(f"--ignore-column {unknown_ignored} not in the data's columns {list(header)}")
    columns = [c for c in header if c not in ignore]
    if len(set(columns)) != len(columns):
        dupes = sorted({c for c in columns if columns.count(c) > 1})
        raise BaselineInputError(f"the data has duplicate column names {dupes}")
    return columns


def _by_name(columns: list[str], matched: list[str], names: Mapping[str, Slot], slots: Sequence[Slot]) -> TableMapping:
    unmatched = [c for c in columns if c not in names]
    covered = {names[c] for c in matched}
    uncovered = [s for s in slots if s not in covered]
    if unmatched or uncovered:
        raise BaselineInputError(
            "columns do not match the model's inputs by name: "
            + (f"columns {unmatched} match no input feature; " if unmatched else "")
            + (f"no column for {[_slot_name(s) for s in uncovered]}; " if uncovered else "")
            + "name columns '<input>', '<input>[i]' or per --feature-names"
            + (f", and drop the others with {ignore_flags(unmatched)}" if unmatched else "")
        )
    return TableMapping(matched, [names[c] for c in matched], {}, "name")


def _by_order(columns: list[str], slots: list[Slot], feature_names: Mapping[str, Sequence[str]]) -> TableMapping:
    if len(columns) != len(slots):
        # Every name on both sides: the extra one (most often the label) may be anywhere in the header.
        more = len(columns) > len(slots)
        raise BaselineInputError(
            f"no column name matches an input feature, so columns map to features by order, but the data has "
            f"{len(columns)} columns for the model's {len(slots)} features ({abs(len(columns) - len(slots))} "
            f"{'more' if more else 'fewer'} than needed). Data columns: {columns}; model features: "
            f"{[_slot_name(s) for s in slots]}. "
            + (
                "Drop each column that is not a feature (such as the label) with --ignore-column NAME"
                if more
                else "Give a column for every feature"
            )
            + ", or name the columns '<input>[i]' (or per --feature-names) to map them by name"
        )
    header_names: dict[str, list[str]] = {}
    for column, slot in zip(columns, slots, strict=True):
        if slot.column is not None and slot.tensor not in feature_names:
            header_names.setdefault(slot.tensor, []).append(column)
    # A single-column input keeps its tensor name: the header then only confirms the order.
    header_names = {t: n for t, n in header_names.items() if len(n) > 1}
    return TableMapping(columns, slots, header_names, "order")


def ignore_flags(columns: Sequence[str]) -> str:
    return " ".join(f"--ignore-column {shlex.quote(c)}" for c in columns)


def _slot_name(slot: Slot) -> str:
    return slot.tensor if slot.column is None else f"{slot.tensor}[{slot.column}]"
