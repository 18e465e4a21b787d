"""Reading and writing preference data: JSON Lines, CSV, Parquet, pandas and Python records.

A preference file holds one comparison per row. The columns are

==================  ==========================================================================
``xa``, ``xb``      the two items (required). Alternatively ``chosen`` / ``rejected`` with no
                    label: the TRL / Hugging Face convention, read as ``xa = chosen``,
                    ``xb = rejected``, ``y = 1``.
``y`` or ``label``  the probability that ``xa`` was preferred, in [0, 1] (required with
                    ``xa``/``xb`` unless ``tie`` is true; forbidden with ``chosen``/``rejected``).
``tie``             optional bool: true means ``y = 0.5``.
``annotator_id``    optional: integers ``>= 0``, or strings (names) that are mapped to
                    ``0, 1, 2, …`` in order of first appearance; the names are returned in
                    :attr:`ReadResult.annotator_names` (``annotator_names[k]`` is id ``k``).
``weight``          optional weight ``>= 0`` of each comparison (``ReadResult.prefs.weight``, also :attr:`ReadResult.weights`).
``prompt``          optional. With text items, a string or a list of chat messages, in
                    ``ReadResult.prefs.prompt`` (every row must have one if any row does).
                    With other items kept as is (a string or a list of token ids) in
                    :attr:`ReadResult.prompts`; it is *not* prepended to the items.
``wins_a``,         aggregated data instead of ``y``/``label``/``tie``/``weight``: one row per
``wins_b``,         pair ``xa``, ``xb`` with the number of times ``xa`` won (``wins_a``), ``xb``
``ties``            won (``wins_b``) and, optionally, they tied (``ties``; no column: 0), each
                    an integer ``>= 0``. A row gives up to three weighted comparisons:
                    ``(xa, xb, y=1, weight=wins_a)``, ``(xa, xb, y=0, weight=wins_b)``,
                    ``(xa, xb, y=0.5, weight=ties)``, in this order, leaving out zero counts
                    (a row of zeros gives none). Fitting them equals fitting the rows they count.
==================  ==========================================================================

Other columns are ignored and listed in :attr:`ReadResult.ignored_columns`, except that an
unknown column whose name is close to a known one (``yy``, ``wieght``, ``Annotator ID``) is an
error naming both (``column 'yy' is not known: did you mean 'y'?``); ``columns={"yy": "y"}``
renames it, ``columns={"yy": None}`` ignores it. Duplicate columns (also made by ``columns=``)
are an error in every format.

When the data have an ``annotator_id`` or ``weight`` column, a row where it is missing (null,
NaN, an empty CSV cell, a JSON object without the key) is a problem of that row. With
``allow_missing=True`` a missing value is absent instead: the column is dropped if no row has a
value, and rows without one are problems only if other rows have one.

Items (``items=``) are

* ``"id"``: integer ids of a finite support → ``LongTensor`` of shape ``(n,)``;
* ``"number"``: real numbers → float tensor of shape ``(n,)`` (the default dtype);
* ``"vector"``: non-empty lists of numbers, all of the same length ``d`` → float ``(n, d)``;
* ``"tokens"``: non-empty lists of integer token ids ``>= 0`` of varying length →
  ``LongTensor`` of shape ``(n, L)`` padded on the right with :data:`PAD_TOKEN` ``= -1`` to the
  longest sequence ``L`` of ``xa`` and ``xb`` together;
* ``"text"``: completions before tokenization, each a non-empty string (*standard*) or a
  non-empty list of chat messages ``{"role": str, "content": str}`` (*conversational*; not in
  CSV) → :class:`~pbde.TextPreferences` (with ``prompt``, ``y``, ``annotator_id``, ``weight``);
  all items and prompts of a file share one format. Nothing is tokenized here.
* ``"name"``: strings naming the items of a finite support (``"Boston"``, ``"Ohio State"``)
  → ``LongTensor`` ids ``0, 1, 2, …`` in order of first appearance (row by row, ``xa`` before
  ``xb``); :attr:`ReadResult.item_names` ``[k]`` is the name of id ``k``;
* ``"auto"`` (default): scalars → ``"id"`` if every item is an integer, else ``"number"``;
  lists of numbers → ``"tokens"`` if every element is an integer, else ``"vector"``; strings and
  message lists → ``"text"``, except that strings are ``"name"`` when there is no ``prompt``
  column, every item is a string of at most 64 characters without a line break, and some item
  occurs more than once (pass ``items="text"`` to keep them as text). Whether items are
  numbers, lists or text is fixed by the first row that has a readable item. In CSV an item
  column is text when any of its cells is neither empty, a number, nor a ``[...]`` list.

Row numbers in every :class:`Problem` (and :attr:`ReadResult.rows`) are, for text files, the
1-based line numbers an editor shows: for JSON Lines the line of the record (blank lines are
skipped but counted); for CSV the line where the record starts, the header being line 1. For
Parquet, Arrow tables, DataFrames and records they are 0-based positions.

Files are parsed by Arrow's engines (``pyarrow.json``, ``pyarrow.csv.open_csv``,
``pyarrow.parquet``) and validated column by column; where Arrow refuses a part of a file (a
malformed JSON line, a column whose type changes, a key given twice, a CSV record with the wrong
number of fields), that part is parsed again line by line so that the report names the lines.

Every problem of every row is collected before anything is raised. With ``on_error="raise"``
(default) a ``ValueError`` lists the first 20 problems and how many there are in all; with
``on_error="drop"`` the rows with problems are dropped and counted in :attr:`ReadResult.dropped`,
and the problems are in :attr:`ReadResult.problems`. Files are read in chunks of ``chunk_rows``
rows (Parquet record batches, JSON Lines / CSV line batches); only the final tensors hold the
whole file.

pandas and pyarrow are needed only for Parquet and DataFrames: ``pip install "pbde[io]"``.
"""

from __future__ import annotations

import csv
import json
import math
import numbers
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

from pbde._validation import short_repr
from pbde.data import Preferences, TextPreferences, is_chat_message

__all__ = [
    "PAD_TOKEN",
    "Problem",
    "ReadResult",
    "read_preferences",
    "write_preferences",
    "from_records",
    "from_dataframe",
    "from_arrow",
]

PAD_TOKEN = -1
"""Value that pads token sequences on the right to the longest sequence."""

ITEM_KINDS = ("auto", "id", "number", "vector", "tokens", "text", "name")
_NAME_MAX_CHARS = 64
FORMATS = ("jsonl", "csv", "parquet")
_SUFFIXES = {
    ".jsonl": "jsonl",
    ".json-lines": "jsonl",
    ".jsonlines": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_MAX_LISTED = 20
_BOOLS = frozenset((bool, np.bool_))
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_COUNTS = ("wins_a", "wins_b", "ties")
_KNOWN = (
    "xa",
    "xb",
    "chosen",
    "rejected",
    "y",
    "label",
    "tie",
    "annotator_id",
    "weight",
    "prompt",
) + _COUNTS


def _normalized(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name.lower())


def _edit_distance(a: str, b: str) -> int:
    """Optimal string alignment distance: insertions, deletions, substitutions, transpositions."""
    previous2, previous = None, list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        current = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                current[j] = min(current[j], previous2[j - 2] + 1)
        previous2, previous = previous, current
    return previous[-1]


def _close_known(name: str) -> str | None:
    """The known column that ``name`` (not itself known) is probably a misspelling of, if any.

    Close means: equal ignoring case, spaces, ``_`` and ``-``; for the short names ``xa``,
    ``xb``, ``y``, ``tie``, also a doubled letter (``yy``) or two swapped letters (``ax``); for
    longer names, at most one edit (two from names of 7 characters or more), an edit being an
    insertion, a deletion, a substitution or a swap of two neighbours (``wieght``, ``weights``).
    """
    if name in _KNOWN:
        return None
    norm = _normalized(name)
    best, best_distance = None, 3
    for known in _KNOWN:
        target = _normalized(known)
        if norm == target:
            return known
        if len(known) <= 3:
            collapsed = re.sub(r"(.)\1+", r"\1", norm)
            swapped = len(norm) == len(target) and sorted(norm) == sorted(target)
            if collapsed == target or (swapped and _edit_distance(norm, target) == 1):
                return known
            continue
        distance = _edit_distance(norm, target)
        if distance <= (2 if len(target) >= 7 else 1) and distance < best_distance:
            best, best_distance = known, distance
    return best


class Problem(NamedTuple):
    """One thing wrong with one row: its ``row`` (a 1-based line of a text file, else a 0-based
    position; see the module docstring), the ``column`` (or ``None``), why."""

    row: int
    column: str | None
    message: str

    def __str__(self) -> str:
        where = f"row {self.row}" + ("" if self.column is None else f", column '{self.column}'")
        return f"{where}: {self.message}"


@dataclass
class ReadResult:
    """What a reader returns.

    Attributes:
        prefs: the comparisons, ready for :func:`pbde.fit`.
        dropped: number of rows dropped (``on_error="drop"``); 0 otherwise.
        problems: every :class:`Problem` found (empty unless rows were dropped).
        items: the item kind used (``"id"``, ``"number"``, ``"vector"``, ``"tokens"``,
            ``"text"`` (then ``prefs`` is a :class:`~pbde.TextPreferences`) or ``"name"``).
        weights: per-comparison weights, shape ``(n,)``, or ``None`` without a ``weight`` column.
        prompts: per-comparison prompts (str or list of token ids), or ``None`` without a
            ``prompt`` column.
        annotator_names: ``annotator_names[k]`` is the name of annotator id ``k`` when the file
            holds string ids; ``None`` when ids are integers or absent.
        ignored_columns: columns that were present but not used.
        rows_read: number of data rows seen (kept + dropped).
        rows: row number in the source (as in :class:`Problem`) of each kept comparison, shape
            ``(n,)``, to join the comparisons back to other columns (a row of counts gives up to
            three comparisons, which share its row number).
        item_names: with ``items="name"``, ``item_names[k]`` is the name of item id ``k``;
            ``None`` otherwise.
    """

    prefs: Preferences | TextPreferences
    dropped: int = 0
    problems: list[Problem] = field(default_factory=list)
    items: str = "number"
    weights: torch.Tensor | None = None
    prompts: list | None = None
    annotator_names: list[str] | None = None
    ignored_columns: list[str] = field(default_factory=list)
    rows_read: int = 0
    rows: torch.Tensor | None = None
    item_names: list[str] | None = None

    def __repr__(self) -> str:
        return (
            f"ReadResult({self.prefs!r}, items={self.items!r}, dropped={self.dropped}, "
            f"problems={len(self.problems)})"
        )


# -- argument checks -----------------------------------------------------------------------


def _check_options(items, on_error, chunk_rows=1, allow_missing=False) -> None:
    if not isinstance(allow_missing, bool):
        raise TypeError(
            f"'allow_missing' must be a bool. Got {type(allow_missing).__name__} {allow_missing!r}."
        )
    if items not in ITEM_KINDS:
        raise ValueError(f"'items' must be one of {ITEM_KINDS}. Got {items!r} instead.")
    if on_error not in ("raise", "drop"):
        raise ValueError(f"'on_error' must be 'raise' or 'drop'. Got {on_error!r} instead.")
    if chunk_rows is None:
        return
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"'chunk_rows' must be an int >= 1 or None. Got {chunk_rows!r} instead.")


def _resolve_format(path: str, format: str | None) -> str:
    if format is not None:
        if format not in FORMATS:
            raise ValueError(f"'format' must be one of {FORMATS} or None. Got {format!r} instead.")
        return format
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in _SUFFIXES:
        raise ValueError(
            f"Cannot infer the format of {path!r} from its suffix {suffix!r}: pass "
            f"format='jsonl', 'csv' or 'parquet' (known suffixes: {sorted(_SUFFIXES)})."
        )
    return _SUFFIXES[suffix]


def _require_pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            'Parquet and DataFrame support needs pyarrow: pip install "pbde[io]"'
        ) from error
    return pyarrow


def _require_pandas():
    try:
        import pandas
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError('DataFrame support needs pandas: pip install "pbde[io]"') from error
    return pandas


# -- cell parsing --------------------------------------------------------------------------


class _Bad(Exception):
    """A problem with one field of one row (turned into a Problem, never escapes)."""


class _Invalid:
    """A field whose text could not even be parsed (CSV cells, undecodable bytes)."""

    __slots__ = ("message",)

    def __init__(self, message: str):
        self.message = message


def _is_missing(value) -> bool:
    if value is None:
        return True
    name = type(value).__name__
    return name in ("NAType", "NaTType")


def _as_int(value, what: str) -> int:
    """An integer (Python/numpy int, or a float with an integral value)."""
    if isinstance(value, (bool, np.bool_)):
        raise _Bad(f"{what} must be an integer, got a bool {value!r}")
    if isinstance(value, numbers.Integral):
        value = int(value)
    elif isinstance(value, numbers.Real):
        value = float(value)
        if not math.isfinite(value):
            raise _Bad(f"{what} must be a finite integer, got {value!r}")
        if not value.is_integer():
            raise _Bad(f"{what} must be an integer, got non-integer {value!r}")
        value = int(value)
    else:
        raise _Bad(f"{what} must be an integer, got {type(value).__name__} {short_repr(value)}")
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise _Bad(f"{what} must fit in int64, got {short_repr(value)}")
    return value


def _as_float(value, what: str) -> float:
    if isinstance(value, (bool, np.bool_)):
        raise _Bad(f"{what} must be a number, got a bool {value!r}")
    if not isinstance(value, numbers.Real):
        raise _Bad(f"{what} must be a number, got {type(value).__name__} {short_repr(value)}")
    try:
        out = float(value)
    except OverflowError:
        raise _Bad(f"{what} is too large for a float: {short_repr(value)}") from None
    if not math.isfinite(out):
        raise _Bad(f"{what} must be finite (no NaN or inf), got {out!r}")
    return out


def _parse_item(value, kind: str):
    """Return ``(is_list, value, all_int)`` for one item, or raise ``_Bad``."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        if kind in ("id", "number"):
            raise _Bad(f"items are {kind!r} (scalars), got a list {short_repr(value)}")
        if len(value) == 0:
            raise _Bad("empty sequence (items must hold at least one element)")
        if kind == "tokens" or kind == "auto":
            try:
                ints = [_as_int(v, "token id") for v in value]
            except _Bad:
                if kind == "tokens":
                    raise
                ints = None
            if ints is not None:
                if kind == "tokens" and min(ints) < 0:
                    raise _Bad(
                        f"token ids must be >= 0 ({PAD_TOKEN} pads sequences), got {min(ints)}"
                    )
                return True, ints, True
        return True, [_as_float(v, "vector element") for v in value], False
    if isinstance(value, str):
        raise _Bad(
            f"items must be numbers, integer ids or lists of them, got the string "
            f"{short_repr(value)} (tokenize text first)"
        )
    if kind in ("vector", "tokens"):
        raise _Bad(f"items are {kind!r} (lists), got {type(value).__name__} {short_repr(value)}")
    if kind == "id":
        return False, _as_int(value, "id"), True
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
        if kind == "number":
            return False, float(value), False
        return False, _as_int(value, "item"), True
    return False, _as_float(value, "item"), False


def _looks_textual(value) -> bool:
    """A string, or a non-empty list whose first element is a mapping (a chat message)."""
    if isinstance(value, str):
        return True
    if isinstance(value, np.ndarray):
        return value.dtype == object and value.size > 0 and isinstance(value.flat[0], Mapping)
    return isinstance(value, (list, tuple)) and len(value) > 0 and isinstance(value[0], Mapping)


def _parse_text(value, what: str, allow_empty: bool = False) -> tuple[str, Any]:
    """Return ``(format, value)`` for a text field: ``"standard"`` (a string) or
    ``"conversational"`` (a list of ``{"role", "content"}`` dicts); raise ``_Bad`` otherwise."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, str):
        if not value and not allow_empty:
            raise _Bad(f"empty {what} (text must be non-empty)")
        return "standard", value
    if isinstance(value, (list, tuple)):
        if not value and not allow_empty:
            raise _Bad(f"empty {what} (a message list must hold at least one message)")
        messages = []
        for message in value:
            if not is_chat_message(message):
                raise _Bad(
                    f"{what} must be a string or a list of chat messages (dicts with string "
                    f"'role' and 'content'); got the element {short_repr(message)}"
                )
            # Arrow structs give every message every key of the column: None means absent
            messages.append({k: v for k, v in message.items() if v is not None})
        return "conversational", messages
    raise _Bad(
        f"{what} must be a string or a list of chat messages, got {type(value).__name__} "
        f"{short_repr(value)}"
    )


def _flatten(segments: list) -> list:
    """Stored per-row values: lists of values, and counts of rows without one (``None``)."""
    out: list = []
    for segment in segments:
        out.extend([None] * segment if isinstance(segment, int) else segment)
    return out


def _look_like_names(pairs: list) -> bool:
    """The ``items="auto"`` rule for strings without a prompt column: names when every item is
    a string of at most 64 characters on one line and some item occurs more than once."""
    seen: set[str] = set()
    repeated = False
    for pair in pairs:
        for value in pair:
            if not isinstance(value, str) or len(value) > _NAME_MAX_CHARS or "\n" in value:
                return False
            repeated = repeated or value in seen
            seen.add(value)
    return repeated


def _describe_format(form: str) -> str:
    return "a string" if form == "standard" else "a list of chat messages"


def _parse_bool(value) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral) and int(value) in (0, 1):
        return bool(int(value))
    raise _Bad(f"must be a bool (true/false or 0/1), got {short_repr(value)}")


# -- the builder: row-level validation, chunk storage, final tensors -----------------------


def _to_numpy(array, private: bool) -> np.ndarray:
    """A numeric Arrow array without nulls as numpy: writable and without a copy when the
    buffer is ours (``private``: read here from a file) and mutable, else as Arrow gives it."""
    chunks = getattr(array, "chunks", [array])
    if private and len(chunks) == 1:
        chunk = chunks[0]
        dtype = {"int64": np.int64, "double": np.float64}.get(str(chunk.type))
        data = chunk.buffers()[1] if dtype is not None else None
        if data is not None and data.is_mutable:
            return np.frombuffer(data, dtype=dtype, count=len(chunk), offset=chunk.offset * 8)
    return array.to_numpy(zero_copy_only=False)


def _segments(parts: list, fill, dtype) -> np.ndarray | None:
    """Per-row values stored as arrays, or counts of rows without a value (``fill``); ``None``
    when no part holds values."""
    if all(isinstance(p, int) for p in parts):
        return None
    return _cat([np.full(p, fill, dtype) if isinstance(p, int) else p for p in parts], dtype)


def _cat(parts: list, dtype) -> np.ndarray:
    """``np.concatenate`` without the copy of a single part."""
    if not parts:
        return np.zeros(0, dtype)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


class _Builder:
    """Collects parsed chunks and turns them into a ReadResult."""

    def __init__(
        self,
        items: str,
        on_error: str,
        source: str,
        numbering: str,
        allow_missing: bool = False,
        silenced: Iterable[str] = (),
    ):
        self.kind = items
        self.on_error = on_error
        self.allow_missing = allow_missing
        self.silenced = frozenset(silenced)  # unknown columns the caller asked to ignore
        self.source = source
        self.numbering = numbering
        self.problems: list[Problem] = []
        self.rows: list[np.ndarray] = []
        self.ok: list[np.ndarray] = []
        self.is_list: bool | None = None  # items are lists (True) or scalars (False)
        self.shape_row = -1  # row that fixed is_list
        self.any_float = False
        self.xa: list[tuple[np.ndarray, np.ndarray | None]] = []  # (values, lengths)
        self.xb: list[tuple[np.ndarray, np.ndarray | None]] = []
        self.y: list[np.ndarray] = []
        self.ids: list[np.ndarray] = []  # -1 where missing
        self.id_type: type | None = None
        self.id_row = -1
        self.names: dict[str, int] = {}
        self.weights: list[np.ndarray] = []  # NaN where missing
        # counts (wins_a, wins_b, ties) per row, shape (m, 3): -2 in a row without counts, -1
        # for a missing ties; a count of rows stands for a chunk without counts
        self.counts: list = []
        self.prompts: list = []
        self.has_prompt = False
        # text items ("text", "name"): fixed by the first row with a readable item
        self.text: bool | None = True if items in ("text", "name") else None
        self.text_row = -1
        self.text_format: str | None = None  # "standard" or "conversational"
        self.format_row = -1
        self.texts: list = []  # per stored row: (xa, xb) for text items, else None
        self.csv_text = False  # a CSV batch had text items: every later item cell is text
        self.seen_columns: set[str] = set()
        self.in_order = True  # rows are stored in file order (else finish sorts them)
        self.private = False  # Arrow data read here from a file: its buffers may be reused

    # one chunk of rows, each a Mapping from column to value (missing: absent or None)
    def add_rows(self, rows: list[int], records: list, pre: dict[int, list[Problem]]) -> None:
        """Validate one chunk: ``records[i]`` (a mapping, or None if unparseable) is ``rows[i]``."""
        m = len(rows)
        ok = np.ones(m, dtype=bool)
        parsed_items = []
        chunk_float = False
        y = np.zeros(m)
        ids = np.full(m, -1, dtype=np.int64)
        weights = np.full(m, np.nan)
        counts = np.full((m, 3), -2, dtype=np.int64)
        prompts = []
        for i, (row, record) in enumerate(zip(rows, records, strict=True)):
            problems = list(pre.get(i, ()))
            values, is_float = None, False
            if record is not None:
                self.seen_columns.update(record.keys())
                values, is_float = self._row(
                    row, record, problems, y, ids, weights, prompts, i, counts
                )
            else:
                prompts.append(None)
            if problems:
                ok[i] = False
                self.problems.extend(problems)
                values = None
            chunk_float |= is_float and values is not None
            parsed_items.append(values)
        self.any_float |= chunk_float
        dtype = np.float64 if chunk_float else np.int64
        for k, name in enumerate(("xa", "xb")):
            if self.is_list:
                flat, lengths = [], []
                for values in parsed_items:
                    item = [] if values is None else values[k]
                    flat.extend(item)
                    lengths.append(len(item))
                stored = (np.array(flat, dtype=dtype), np.array(lengths, np.int64))
            else:  # scalars, text (stored aside), or no readable item yet (all rows bad)
                column = [
                    0 if values is None or self.text else values[k] for values in parsed_items
                ]
                stored = (np.array(column, dtype=dtype), None)
            getattr(self, name).append(stored)
        self.rows.append(np.asarray(rows, dtype=np.int64))
        self.ok.append(ok)
        self.y.append(y)
        self.ids.append(ids)
        self.weights.append(weights)
        self.counts.append(counts)
        self.prompts.append(prompts)  # segments: a list of values, or a count of Nones
        self.texts.append(parsed_items if self.text else m)

    def add_records(self, rows: list[int], records: list, pre: dict[int, list[Problem]]) -> None:
        """Like :meth:`add_rows`, through the vectorized path where the columns allow it."""
        try:
            import pyarrow as pa
        except ImportError:  # pragma: no cover - pyarrow is optional for JSON Lines and CSV
            self.add_rows(rows, records, pre)
            return
        good = [i for i, record in enumerate(records) if record is not None and i not in pre]
        if len(good) < 16:
            self.add_rows(rows, records, pre)
            return
        keys = sorted(set().union(*(records[i].keys() for i in good)))
        arrays = []
        for key in keys:
            values = [records[i].get(key) for i in good]
            try:
                array = pa.array(values)
            except Exception:  # mixed or unsupported types: pyarrow raises several kinds
                self.add_rows(rows, records, pre)
                return
            # pyarrow turns True into 1.0 in a column of floats: bools go row by row
            if not pa.types.is_boolean(array.type) and any(type(v) in _BOOLS for v in values):
                self.add_rows(rows, records, pre)
                return
            arrays.append(array)
        good_set = set(good)
        bad = [i for i in range(len(records)) if i not in good_set]
        if bad:
            self.in_order = False  # the bad rows are stored before the good ones
            self.add_rows([rows[i] for i in bad], [records[i] for i in bad], pre)
        batch = pa.RecordBatch.from_arrays(arrays, names=keys)
        self.add_arrow_batch(batch, keys, np.asarray(rows, dtype=np.int64)[good])

    def add_arrow_batch(self, batch, names: list[str], rows) -> None:
        """Validate one Arrow record batch whose rows are numbered ``rows`` (int array).

        Batches of plain numeric columns are checked with vectorized numpy; only the rows that
        fail a check (and batches of other column types) go through the row-by-row parser,
        which writes the problems.
        """
        columns = self._numeric_columns(batch, names)
        if columns is None:
            data = [column.to_pylist() for column in batch.columns]
            records = [
                {name: column[i] for name, column in zip(names, data, strict=True)}
                for i in range(batch.num_rows)
            ]
            self.add_rows(rows.tolist(), records, {})
            return
        self.seen_columns.update(names)

        def values(name):
            array = columns[name]
            if array.null_count == 0:
                return _to_numpy(array, self.private), np.zeros(len(array), dtype=bool)
            nulls = array.is_null().to_numpy(zero_copy_only=False)
            filler = False if array.type == "bool" else 0
            return array.fill_null(filler).to_numpy(zero_copy_only=False), nulls

        clean = np.ones(batch.num_rows, dtype=bool)
        chosen_mode = "chosen" in columns
        items, floats = [], False
        for name in ("chosen", "rejected") if chosen_mode else ("xa", "xb"):
            x, null = values(name)
            if columns[name].null_count:
                clean &= ~null
            if x.dtype.kind == "f":
                finite = np.isfinite(x)
                clean &= finite
                if self.kind == "id":  # integral floats are ids; the rest goes row by row
                    safe = np.where(finite & (np.abs(x) < 2.0**63), x, 0.5)
                    clean &= (safe == np.floor(safe)) & finite
                    x = np.where(clean, safe, 0).astype(np.int64)
                else:
                    floats = True
            elif self.kind == "number":
                x, floats = x.astype(np.float64), True
            items.append(x)
        tie = None
        if "tie" in columns:
            tie, _ = values("tie")
            tie = tie.astype(bool)
        label_name = "y" if "y" in columns else "label" if "label" in columns else None
        counts = None
        if "wins_a" in columns:  # aggregated rows: counts, no label
            y = np.zeros(batch.num_rows)
            counts = np.zeros((batch.num_rows, 3), dtype=np.int64)  # no ties column: 0 ties
            for k, name in enumerate(_COUNTS):
                if name not in columns:
                    continue
                raw, null = values(name)
                if raw.dtype.kind == "f":
                    null = null | np.isnan(raw)  # NaN is missing, as in a float weight column
                    whole = np.isfinite(raw) & (np.abs(raw) < 2.0**63)
                    whole &= np.floor(np.where(whole, raw, 0.5)) == raw
                    clean &= whole | null  # non-integer counts go row by row
                    raw = np.where(whole, raw, 0).astype(np.int64)
                clean &= null | (raw >= 0)
                if k < 2:
                    clean &= ~null
                counts[:, k] = np.where(null, -1, raw)
        elif chosen_mode:
            y = np.ones(batch.num_rows) if tie is None else np.where(tie, 0.5, 1.0)
        else:
            y, null = values(label_name)  # integer labels stay integers until the tensor
            if y.dtype.kind not in "iu":
                y = y.astype(np.float64, copy=False)
                clean &= np.isfinite(y)
            clean &= (y >= 0) & (y <= 1)
            if columns[label_name].null_count:
                clean &= ~null
            if tie is not None:
                clean &= ~tie | (y == 0.5)
        ids = None  # no annotator_id column: stored as a count of rows
        if "annotator_id" in columns:
            raw, null = values("annotator_id")
            clean &= null | (raw >= 0)
            ids = np.where(null, -1, raw).astype(np.int64)
        weights = None
        if "weight" in columns:
            raw, null = values("weight")
            raw = raw.astype(np.float64)
            clean &= null | np.isnan(raw) | (np.isfinite(raw) & (raw >= 0))
            weights = np.where(null, np.nan, raw)
        all_clean = bool(clean.all())
        good = slice(None) if all_clean else np.flatnonzero(clean)  # a slice copies nothing
        size = batch.num_rows if all_clean else good.size
        if size:
            if self.is_list is None:
                self.is_list, self.shape_row = False, int(rows[good][0])
            if self.id_type is None and ids is not None:
                present = np.flatnonzero(ids[good] >= 0)
                if present.size:
                    self.id_type, self.id_row = int, int(rows[good][present[0]])
            self.any_float |= floats
            dtype = np.float64 if floats else np.int64
            self.xa.append((items[0][good].astype(dtype, copy=False), None))
            self.xb.append((items[1][good].astype(dtype, copy=False), None))
            self.rows.append(rows[good])
            self.ok.append(size)  # every stored row of this batch is valid
            self.y.append(y[good])
            self.ids.append(size if ids is None else ids[good])
            self.weights.append(size if weights is None else weights[good])
            self.counts.append(size if counts is None else counts[good])
            self.prompts.append(size)
            self.texts.append(size)
        bad = np.flatnonzero(~clean)
        if bad.size:
            import pyarrow as pa

            self.in_order = self.in_order and size == 0
            records = batch.take(pa.array(bad)).to_pylist()
            records = [
                {
                    name: record[original]
                    for name, original in zip(names, batch.schema.names, strict=True)
                }
                for record in records
            ]
            self.add_rows(rows[bad].tolist(), records, {})

    def _numeric_columns(self, batch, names):
        """The batch's columns by pbde name if the vectorized path applies, else ``None``."""
        import pyarrow.types as types

        if (
            self.kind in ("vector", "tokens", "text", "name")
            or self.is_list
            or self.text
            or len(set(names)) != len(names)
        ):
            return None
        if len(set(batch.schema.names)) != len(batch.schema.names):
            return None
        columns = {}
        for name, array in zip(names, batch.columns, strict=True):
            if name not in _KNOWN:
                continue
            kind = array.type
            if name == "tie":
                if not types.is_boolean(kind):
                    return None
            elif name == "annotator_id":
                if not types.is_signed_integer(kind) or self.id_type is str:
                    return None
            elif name == "prompt" or not (types.is_signed_integer(kind) or types.is_floating(kind)):
                return None
            columns[name] = array
        keys = set(columns)
        if keys & set(_COUNTS):
            labels = {"chosen", "rejected", "y", "label", "tie", "weight"}
            counts = {"xa", "xb", "wins_a", "wins_b"} <= keys and not keys & labels
            return columns if counts else None
        pair = {"xa", "xb"} <= keys and not keys & {"chosen", "rejected"}
        pair = pair and len(keys & {"y", "label"}) == 1
        chosen = {"chosen", "rejected"} <= keys and not keys & {"xa", "xb", "y", "label"}
        return columns if pair or chosen else None

    def _row(self, row, record, problems, y, ids, weights, prompts, i, counts):
        def get(name):
            value = record.get(name)
            return None if _is_missing(value) else value

        def bad(column, message):
            problems.append(Problem(row, column, message))

        xa, xb, chosen, rejected = get("xa"), get("xb"), get("chosen"), get("rejected")
        pair_mode = xa is not None or xb is not None
        chosen_mode = chosen is not None or rejected is not None
        names = ("xa", "xb")
        if pair_mode and chosen_mode:
            bad(None, "give either 'xa'/'xb' or 'chosen'/'rejected', not both")
        elif chosen_mode:
            xa, xb, names = chosen, rejected, ("chosen", "rejected")
        parsed = []
        is_float = False
        for column, value in zip(names, (xa, xb), strict=True):
            if value is None:
                other = {"xa": "chosen", "xb": "rejected"}.get(column)
                alias = "" if chosen_mode or other is None else f" (or '{other}')"
                bad(column, f"missing field '{column}'{alias}")
                continue
            if isinstance(value, _Invalid):
                bad(column, value.message)
                continue
            textual = self.text if self.text is not None else _looks_textual(value)
            if self.kind == "auto" and self.text is not None and textual != _looks_textual(value):
                what = "text" if self.text else "numbers"
                bad(
                    column,
                    f"items are {what} (fixed by row {self.text_row}), got {short_repr(value)}",
                )
                continue
            if textual:
                try:
                    if self.kind == "name" and not isinstance(value, str):
                        raise _Bad(f"items are names (strings), got {short_repr(value)}")
                    form, parsed_value = _parse_text(value, f"'{column}'")
                    if self.text_format is None:
                        self.text_format, self.format_row = form, row
                    elif form != self.text_format:
                        raise _Bad(
                            f"mixed text formats: items are {self.text_format} (fixed by row "
                            f"{self.format_row}), got {_describe_format(form)}"
                        )
                except _Bad as error:
                    bad(column, str(error))
                    continue
                if self.text is None:
                    self.text, self.text_row = True, row
                parsed.append(parsed_value)
                continue
            if self.text is None:
                self.text, self.text_row = False, row
            try:
                is_list, parsed_value, all_int = _parse_item(value, self.kind)
            except _Bad as error:
                bad(column, str(error))
                continue
            if self.is_list is None:
                self.is_list, self.shape_row = is_list, row
            elif is_list != self.is_list:
                what = "lists" if self.is_list else "scalars"
                bad(
                    column,
                    f"items are {what} (fixed by row {self.shape_row}), got {short_repr(value)}",
                )
                continue
            is_float |= not all_int
            parsed.append(parsed_value)
        has_counts = any(get(c) is not None for c in _COUNTS) or (
            ("wins_a" in record or "wins_b" in record)
            and all(get(c) is None for c in ("y", "label", "tie"))
        )
        if has_counts:
            self._row_counts(row, record, get, bad, chosen_mode and not pair_mode, counts, i)
            y[i] = 0.0
        # label
        label_columns = [] if has_counts else [c for c in ("y", "label") if get(c) is not None]
        tie = None if has_counts else get("tie")
        tie_value = False
        if tie is not None:
            try:
                if isinstance(tie, _Invalid):
                    raise _Bad(tie.message)
                tie_value = _parse_bool(tie)
            except _Bad as error:
                bad("tie", str(error))
        label = None
        if len(label_columns) == 2:
            bad("label", "give either 'y' or 'label', not both")
        elif label_columns:
            column = label_columns[0]
            raw = get(column)
            try:
                if isinstance(raw, _Invalid):
                    raise _Bad(raw.message)
                label = _as_float(raw, "the label")
                if not 0.0 <= label <= 1.0:
                    raise _Bad(
                        f"label must lie in [0, 1] (1 means x_A is preferred), got {label!r}"
                    )
                if chosen_mode and not pair_mode:
                    raise _Bad(
                        "a 'chosen'/'rejected' row cannot also have a label: chosen is "
                        "preferred by definition (use 'xa'/'xb' with 'y' for other labels)"
                    )
                if tie_value and label != 0.5:
                    raise _Bad(f"'tie' is true but the label is {label!r}, not 0.5")
            except _Bad as error:
                bad(column, str(error))
        if tie_value:
            label = 0.5
        elif label is None and chosen_mode and not pair_mode:
            label = 1.0
        elif label is None and not label_columns and not has_counts:
            bad("y", "missing field 'y' (or 'label', or 'tie': true)")
        y[i] = 0.0 if label is None else label
        # annotator id
        annotator = get("annotator_id")
        if isinstance(annotator, float) and math.isnan(annotator):
            annotator = None  # pandas marks missing values of a float column with NaN
        if annotator is not None:
            try:
                if isinstance(annotator, _Invalid):
                    raise _Bad(annotator.message)
                if isinstance(annotator, str):
                    kind = str
                else:
                    annotator = _as_int(annotator, "annotator id")
                    kind = int
                if self.id_type is None:
                    self.id_type, self.id_row = kind, row
                elif kind is not self.id_type:
                    raise _Bad(
                        f"annotator ids are {self.id_type.__name__}s (fixed by row "
                        f"{self.id_row}), got {short_repr(annotator)}: do not mix names and ints"
                    )
                if kind is int:
                    if annotator < 0:
                        raise _Bad(f"annotator id must be >= 0, got {annotator}")
                    ids[i] = annotator
                else:
                    ids[i] = self.names.setdefault(annotator, len(self.names))
            except _Bad as error:
                bad("annotator_id", str(error))
        # weight
        weight = None if has_counts else get("weight")
        if isinstance(weight, float) and math.isnan(weight):
            weight = None
        if weight is not None:
            try:
                if isinstance(weight, _Invalid):
                    raise _Bad(weight.message)
                weight = _as_float(weight, "weight")
                if weight < 0:
                    raise _Bad(f"weight must be >= 0, got {weight!r}")
                weights[i] = weight
            except _Bad as error:
                bad("weight", str(error))
        prompt = get("prompt")
        if isinstance(prompt, _Invalid):
            bad("prompt", prompt.message)
            prompt = None
        if isinstance(prompt, np.ndarray):
            prompt = prompt.tolist()
        if prompt is not None and self.text:
            try:
                if self.kind == "name":
                    raise _Bad("items are names: a 'prompt' column makes them text (items='text')")
                form, prompt = _parse_text(prompt, "'prompt'", allow_empty=True)
                if self.text_format is None:
                    self.text_format, self.format_row = form, row
                elif form != self.text_format:
                    raise _Bad(
                        f"mixed text formats: rows are {self.text_format} (fixed by row "
                        f"{self.format_row}), got {_describe_format(form)}"
                    )
            except _Bad as error:
                bad("prompt", str(error))
        if prompt is not None:
            self.has_prompt = True
        prompts.append(prompt)
        if len(parsed) != 2:
            return None, False
        return tuple(parsed), is_float

    def check_column_names(self) -> None:
        """Raise if a column is an unknown name close to a known one (a misspelling)."""
        close = []
        for name in sorted(self.seen_columns - self.silenced):
            known = _close_known(name)
            if known is not None:
                close.append(f"column '{name}' is not known: did you mean '{known}'?")
        if close:
            raise ValueError(
                f"{self.source}: {'; '.join(close)} Rename the column (read_preferences: "
                f"columns={{'old': 'new'}}), or ignore it with read_preferences(..., "
                f"columns={{'old': None}})."
            )

    def _row_counts(self, row, record, get, bad, chosen_mode, counts, i) -> None:
        """Validate the counts of an aggregated row into ``counts[i]``."""
        if chosen_mode:
            bad(None, "counts ('wins_a', 'wins_b', 'ties') go with 'xa'/'xb', not 'chosen'")
        for column in ("y", "label", "tie", "weight"):
            if get(column) is not None:
                bad(
                    column,
                    f"a row with counts ('wins_a', 'wins_b', 'ties') cannot also have "
                    f"'{column}' (the counts give the labels and the weights)",
                )
        counts[i] = (-1, -1, -1)
        for k, column in enumerate(_COUNTS):
            value = get(column)
            if isinstance(value, float) and math.isnan(value):
                value = None  # pandas marks missing values of a float column with NaN
            if value is None:
                if column != "ties":  # a missing ties is checked in finish (allow_missing)
                    bad(column, f"missing field '{column}' (a row with counts needs both wins)")
                continue
            try:
                if isinstance(value, _Invalid):
                    raise _Bad(value.message)
                count = _as_int(value, f"'{column}'")
                if count < 0:
                    raise _Bad(f"'{column}' must be a count >= 0, got {count}")
                counts[i, k] = count
            except _Bad as error:
                bad(column, str(error))
        if "ties" not in record:
            counts[i, 2] = 0

    def finish(self) -> ReadResult:
        self.check_column_names()
        rows = _cat(self.rows, np.int64)
        ok = _cat([np.ones(p, bool) if isinstance(p, int) else p for p in self.ok], bool)
        n = rows.shape[0]
        if self.in_order or n < 2 or bool((rows[1:] > rows[:-1]).all()):
            order = None  # file order already
        else:  # the vectorized path stores a chunk's clean rows before its bad ones
            order = np.argsort(rows, kind="stable")
        ids = _segments(self.ids, -1, np.int64)  # None: no annotator_id anywhere
        weights = _segments(self.weights, np.nan, np.float64)
        y_all = _cat(self.y, np.float64)
        self.rows, self.ok, self.ids, self.weights, self.y = [], [], [], [], []
        if self.has_prompt or self.text:  # the per-row values are needed only then
            self.prompts, self.texts = _flatten(self.prompts), _flatten(self.texts)
        kind = self.kind
        if self.text and kind == "auto":
            kind = "text"  # "name" is decided below, once the kept rows are known
        elif kind == "auto":
            if self.is_list:
                kind = "vector" if self.any_float else "tokens"
            else:
                kind = "number" if self.any_float else "id"
        xa, la = self._concat(self.xa)
        xb, lb = self._concat(self.xb)
        self.xa, self.xb = [], []  # the chunks are no longer needed: halve the peak memory
        late: list[Problem] = []
        if self.is_list and kind == "vector":
            valid = np.flatnonzero(ok) if order is None else order[ok[order]]
            if valid.size:
                d = int(la[valid[0]])
                for column, lengths in (("xa", la), ("xb", lb)):
                    wrong = np.flatnonzero(ok & (lengths != d))
                    for j in wrong:
                        late.append(
                            Problem(
                                int(rows[j]),
                                column,
                                f"vector has length {int(lengths[j])}, expected {d} (the "
                                f"length in row {int(rows[valid[0]])})",
                            )
                        )
        if kind in ("number", "vector"):  # finite in float64 may overflow the default dtype
            limit = torch.finfo(torch.get_default_dtype()).max
            for column, values, lengths in (("xa", xa, la), ("xb", xb, lb)):
                too_big = np.abs(values) > limit
                if lengths is not None:
                    owners = np.repeat(np.arange(n), lengths)[too_big]
                    too_big = np.zeros(n, dtype=bool)
                    too_big[owners] = True
                for j in np.flatnonzero(ok & too_big):
                    late.append(
                        Problem(
                            int(rows[j]),
                            column,
                            f"item overflows {torch.get_default_dtype()} (|x| > {limit:.4g})",
                        )
                    )
        weight_limit = torch.finfo(torch.get_default_dtype()).max
        for j in [] if weights is None else np.flatnonzero(ok & (weights > weight_limit)):
            late.append(
                Problem(int(rows[j]), "weight", f"weight overflows {torch.get_default_dtype()}")
            )
        counts = None
        if {"wins_a", "wins_b"} & self.seen_columns:
            counts = np.concatenate(
                [np.full((c, 3), -2, np.int64) if isinstance(c, int) else c for c in self.counts]
            )
            for j in np.flatnonzero(ok & (counts[:, 0] == -2)):
                late.append(
                    Problem(
                        int(rows[j]),
                        "wins_a",
                        "missing fields 'wins_a' and 'wins_b': the data hold counts, and a row "
                        "holds counts or a label, not one or the other",
                    )
                )
        self.counts = []
        checks = []
        if ids is not None:
            checks.append(("annotator_id", ids, ids < 0))
        if weights is not None:
            checks.append(("weight", weights, np.isnan(weights)))
        if counts is not None:
            checks.append(("ties", None, counts[:, 2] == -1))
        if self.text and self.has_prompt:
            no_prompt = np.fromiter((p is None for p in self.prompts), bool, len(self.prompts))
            checks.append(("prompt", None, no_prompt))
        for name, _values, missing in checks:
            # a value missing from a column the file has is a problem unless allow_missing
            strict = name != "prompt" and name in self.seen_columns and not self.allow_missing
            others = name != "ties" and bool((~missing & ok).any())  # a missing ties is 0
            message = f"missing '{name}' (other rows have one)"
            if strict and not others:
                message = (
                    f"missing '{name}' (null, NaN or absent in a column the data have; pass "
                    f"allow_missing=True to read a column without values as absent)"
                )
            if strict or others:
                for j in np.flatnonzero(missing & ok):
                    late.append(Problem(int(rows[j]), name, message))
        if late:
            late_rows = {p.row for p in late}
            ok &= ~np.isin(rows, np.fromiter(late_rows, np.int64, len(late_rows)))
            self.problems.extend(late)
            self.problems.sort(key=lambda p: p.row)
        if self.problems and self.on_error == "raise":
            raise ValueError(self._message("has invalid rows"))
        if not ok.any():
            if self.problems:
                raise ValueError(self._message("has no valid row left"))
            raise ValueError(f"{self.source} holds no comparison (no data rows).")
        if order is None and bool(ok.all()):
            keep = slice(None)  # every row, in file order: nothing to copy
            kept_rows = n
        else:  # storage positions of the kept rows, in file order
            keep = np.flatnonzero(ok) if order is None else order[ok[order]]
            kept_rows = keep.size
        w = None if weights is None else weights[keep]
        if counts is None:
            y_kept = y_all[keep]
        else:  # one comparison per non-zero count: (1, wins_a), (0, wins_b), (0.5, ties)
            kept_counts = np.maximum(counts[keep], 0)  # a missing ties (allow_missing) is 0
            owner, which = np.nonzero(kept_counts > 0)
            keep = np.arange(n)[keep][owner]
            y_kept = np.array([1.0, 0.0, 0.5])[which]
            w = kept_counts[owner, which].astype(np.float64)
            if owner.size == 0:
                raise ValueError(
                    f"{self.source} holds no comparison: every count ('wins_a', 'wins_b', "
                    f"'ties') of the {kept_rows} valid row(s) is 0."
                )
        y = torch.tensor(y_kept, dtype=torch.get_default_dtype())  # a copy: Arrow's is read-only
        tensors = []
        if kind not in ("text", "name"):
            for values, lengths in ((xa, la), (xb, lb)):
                tensors.append(self._items(values, lengths, keep, kind, la, lb))
        kept_ids = None if ids is None else ids[keep]
        annotator = None
        if kept_ids is not None and bool((kept_ids >= 0).any()):
            annotator = torch.as_tensor(kept_ids)
        weight_tensor = None
        if w is not None and not np.isnan(w).all():
            weight_tensor = torch.as_tensor(w).to(torch.get_default_dtype())
            if not bool((weight_tensor > 0).any()):
                listed = ", ".join(f"row {int(r)}" for r in rows[keep][:5])
                raise ValueError(
                    f"{self.source}: the weight is 0 in every kept comparison ({listed}"
                    f"{', ...' if w.size > 5 else ''}); at least one weight must be > 0."
                )
        positions = np.arange(n)[keep] if self.has_prompt or kind in ("text", "name") else None
        prompts = None
        if self.has_prompt:
            prompts = [self.prompts[j] for j in positions]
        names = None
        if self.id_type is str and annotator is not None:
            names = list(self.names)
        ignored = sorted(self.seen_columns - set(_KNOWN))
        item_names = None
        if kind in ("text", "name"):
            pairs = [self.texts[j] for j in positions]
            if self.kind == "auto" and not self.has_prompt and _look_like_names(pairs):
                kind = "name"
            if kind == "name":
                index: dict[str, int] = {}
                ids_a = [index.setdefault(a, len(index)) for a, _ in pairs]
                ids_b = [index.setdefault(b, len(index)) for _, b in pairs]
                tensors = [torch.tensor(ids_a, dtype=torch.long), torch.tensor(ids_b)]
                item_names = list(index)
        if kind == "text":
            prefs = TextPreferences(
                prompts,
                [a for a, _ in pairs],
                [b for _, b in pairs],
                y,
                annotator,
                weight_tensor,
            )
        else:
            # validated above (finite items and labels, labels in [0, 1], ids and weights >= 0,
            # a weight > 0): no second pass over the tensors
            prefs = Preferences._trusted(tensors[0], tensors[1], y, annotator, weight_tensor)
        return ReadResult(
            prefs=prefs,
            dropped=int(n - kept_rows),
            problems=self.problems,
            items=kind,
            weights=weight_tensor,
            prompts=prompts,
            annotator_names=names,
            ignored_columns=ignored,
            rows_read=int(n),
            rows=torch.as_tensor(rows[keep]),
            item_names=item_names,
        )

    def _concat(self, parts):
        if not parts:
            return np.zeros(0), None
        dtype = np.float64 if self.any_float else np.int64
        values = _cat([p[0].astype(dtype, copy=False) for p in parts], dtype)
        lengths = None
        if self.is_list:  # chunks read before the first readable item hold only bad rows
            lengths = np.concatenate(
                [p[1] if p[1] is not None else np.zeros(len(p[0]), np.int64) for p in parts]
            )
            values = np.concatenate(
                [p[0].astype(dtype, copy=False) for p in parts if p[1] is not None]
            )
        return values, lengths

    @staticmethod
    def _items(values, lengths, keep, kind, la, lb):
        float_dtype = torch.get_default_dtype()
        if lengths is None:  # Arrow's zero-copy arrays are read-only: copy those
            out = torch.as_tensor(np.require(values[keep], requirements="W"))
            return out.to(float_dtype) if kind == "number" else out.long()
        offsets = np.zeros(lengths.shape[0] + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        kept_lengths = lengths[keep]
        width = int(max(la[keep].max(), lb[keep].max()))
        starts = offsets[:-1][keep]
        # gather all kept elements at once: position p of row r is values[starts[r] + p]
        position = np.arange(width)
        mask = position[None, :] < kept_lengths[:, None]
        index = np.where(mask, starts[:, None] + position[None, :], 0)
        if kind == "tokens":
            dense = np.where(mask, values[index] if values.size else 0, PAD_TOKEN)
            return torch.as_tensor(dense.astype(np.int64))
        dense = values[index].astype(np.float64)
        return torch.as_tensor(dense).to(float_dtype)

    def _message(self, what: str) -> str:
        count = len(self.problems)
        listed = "\n".join(f"  {p}" for p in self.problems[:_MAX_LISTED])
        more = f"\n  ... and {count - _MAX_LISTED} more" if count > _MAX_LISTED else ""
        hint = "" if self.on_error == "drop" else "\nPass on_error='drop' to drop the rows instead."
        return f"{self.source} {what}: {count} problem(s) ({self.numbering}).\n{listed}{more}{hint}"


# -- sources ------------------------------------------------------------------------------


def _renamed(names: Iterable[str], columns: Mapping[str, str | None] | None) -> list[str]:
    """Column names after ``columns`` (a name mapped to ``None`` keeps its name: ignored)."""
    if not columns:
        return list(names)
    return [columns.get(n) or n for n in names]


def _check_unique(names: list[str], original: list[str], source: str) -> None:
    """Duplicate columns (in the file, or made by ``columns=``) are an error in every format."""
    if len(set(names)) == len(names):
        return
    repeated = sorted({n for n in names if names.count(n) > 1})
    renamed = [f"'{o}' -> '{n}'" for o, n in zip(original, names, strict=True) if o != n]
    how = f" after renaming ({', '.join(renamed)})" if renamed else ""
    raise ValueError(
        f"{source} has duplicate columns {repeated}{how}; every column must be unique."
    )


def _rename(record: Mapping, columns: Mapping[str, str | None] | None, source: str):
    if not columns:
        return record
    keys = list(record)
    names = _renamed(keys, columns)
    _check_unique(names, keys, source)
    return dict(zip(names, record.values(), strict=True))


def _silenced(columns: Mapping[str, str | None] | None) -> list[str]:
    """The unknown columns ``columns`` maps to ``None``: ignored without a misspelling check."""
    return [k for k, v in (columns or {}).items() if v is None]


def _check_columns(columns, name: str = "'columns'") -> None:
    """``name``: how the message names the mapping (the CLI's ``--column``)."""
    if columns is None:
        return
    if not isinstance(columns, Mapping) or not all(
        isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in columns.items()
    ):
        raise TypeError(
            f"{name} must be a mapping from the file's column names to pbde's names or None "
            f"(e.g. {{'response_a': 'xa', 'notes': None}}). Got {columns!r}."
        )
    unknown = sorted(set(columns.values()) - set(_KNOWN) - {None})
    if unknown:
        raise ValueError(f"{name} maps to unknown names {unknown}; known names: {_KNOWN}.")
    ignored_known = sorted(k for k, v in columns.items() if v is None and k in _KNOWN)
    if ignored_known:
        raise ValueError(
            f"{name} maps the known columns {ignored_known} to None; None ignores only "
            f"unknown columns (rename a known column to read it under another name)."
        )


def _chunks(iterable: Iterable, size: int) -> Iterator[list]:
    chunk = []
    for item in iterable:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


_BLOCK_BYTES = 1 << 24
_CHUNK_ROWS = 65536  # rows per chunk when a file is read in chunks and chunk_rows is None
_WHOLE_BYTES = 1 << 28  # chunk_rows=None reads CSV / Parquet data of up to 256 MiB at once


def _line_pieces(path, chunk_rows: int) -> Iterator[tuple[int, bytes, np.ndarray]]:
    """Whole lines of a file, at most ``chunk_rows`` lines at a time, read in 16 MiB blocks.

    Yields ``(first, piece, ends)``: ``piece`` holds lines ``first, first + 1, …`` (0-based)
    and ``ends[k]`` is the offset in ``piece`` just after line ``first + k`` (its newline).
    """
    first = 0
    carry = b""
    with open(path, "rb") as handle:
        while True:
            block = handle.read(_BLOCK_BYTES)
            data = carry + block if carry else block
            if not data:
                return
            ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10) + 1
            if block:
                if ends.size == 0:
                    carry = data
                    continue
                carry = data[ends[-1] :]
            else:  # the end of the file: the last line may lack its newline
                carry = b""
                if ends.size == 0 or ends[-1] != len(data):
                    ends = np.append(ends, len(data))
            start = 0
            for k in range(0, ends.size, chunk_rows):
                part = ends[k : k + chunk_rows]
                yield first, data[start : part[-1]], part - start
                first += part.size
                start = int(part[-1])
            if not block:
                return


def _nonblank_lines(piece: bytes, ends: np.ndarray, expected: int) -> np.ndarray | None:
    """0-based positions (within the piece) of the lines that are not blank, if there are
    ``expected`` of them; ``None`` otherwise."""
    starts = np.concatenate(([0], ends[:-1]))
    lengths = ends - starts
    if bool((lengths > 2).all()):  # the common case: no line is blank
        kept = np.arange(ends.size)
    else:
        kept = np.array(
            [k for k in range(ends.size) if piece[starts[k] : ends[k]].strip()], dtype=np.int64
        )
    return kept if kept.size == expected else None


def _read_jsonl(path, builder: _Builder, chunk_rows: int | None, columns) -> None:
    """Parse with ``pyarrow.json`` piece by piece; a piece Arrow refuses (a malformed line, a
    column whose type changes, a key given twice) is parsed line by line to name the lines."""
    chunk_rows = chunk_rows or _CHUNK_ROWS
    try:
        import pyarrow as pa
        import pyarrow.json as pj
    except ImportError:  # pragma: no cover - pyarrow is optional for JSON Lines
        pa = None
    for first, piece, ends in _line_pieces(path, chunk_rows):
        if pa is not None:
            try:
                table = pj.read_json(pa.BufferReader(piece))
            except (pa.ArrowException, ValueError):
                table = None
            kept = None if table is None else _nonblank_lines(piece, ends, table.num_rows)
            if kept is not None and _unique_keys(piece, table, kept):
                names = _renamed(table.column_names, columns)
                _check_unique(names, table.column_names, builder.source)
                rows = kept + (first + 1)  # 1-based line numbers
                for batch in table.to_batches():
                    builder.add_arrow_batch(batch, names, rows[: batch.num_rows])
                    rows = rows[batch.num_rows :]
                continue
        _parse_json_lines(first, piece, ends, builder, columns)


def _unique_keys(piece: bytes, table, kept: np.ndarray) -> bool:
    """Arrow refuses most repeated keys; this cheap count also catches what it may let through."""
    for name in table.column_names:
        if piece.count(b'"' + name.encode() + b'"') > kept.size:
            return False
    return True


def _no_repeated_keys(pairs):
    record = {}
    for key, value in pairs:
        if key in record:
            raise _Bad(f"key '{key}' appears twice in the object (duplicate column)")
        record[key] = value
    return record


def _parse_json_lines(first: int, piece: bytes, ends: np.ndarray, builder: _Builder, columns):
    """The slow path: ``json.loads`` line by line, every problem named by its line number."""
    rows, records, pre = [], [], {}
    start = 0
    for k, end in enumerate(ends.tolist()):
        line, start = piece[start:end], end
        if not line.strip():
            continue
        row = first + k + 1
        i = len(rows)
        rows.append(row)
        try:
            text = line.decode("utf-8-sig" if row == 1 else "utf-8")
            record = json.loads(text, object_pairs_hook=_no_repeated_keys)
            if not isinstance(record, dict):
                raise _Bad(f"line is not a JSON object, got {type(record).__name__}")
            records.append(_rename(record, columns, builder.source))
        except _Bad as error:
            records.append(None)
            pre[i] = [Problem(row, None, str(error))]
        except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeError
            records.append(None)
            reason = str(error) if not isinstance(error, RecursionError) else "too deep"
            pre[i] = [Problem(row, None, f"unparseable JSON line: {short_repr(reason)}")]
    if rows:
        builder.add_records(rows, records, pre)


_INT_TEXT = re.compile(r"[+-]?\d+")


def _csv_number(text: str):
    text = text.strip()
    if _INT_TEXT.fullmatch(text):
        return int(text)
    if "_" in text:
        return _Invalid(f"not a number: {short_repr(text)}")
    try:
        return float(text)
    except ValueError:
        return _Invalid(f"not a number: {short_repr(text)}")


_CSV_MESSAGES = (
    "chat message lists cannot be read from CSV cells; store conversational data as JSON Lines "
    "or Parquet"
)


def _csv_cell(column: str, text: str, kind: str = "auto"):
    try:
        text.encode("utf-8")  # undecodable bytes were kept as lone surrogates
    except UnicodeEncodeError:
        return _Invalid("not valid UTF-8")
    if text.strip() == "":
        return None
    if column in ("xa", "xb", "chosen", "rejected", "prompt"):
        stripped = text.strip()
        if stripped.startswith("["):
            try:
                value = json.loads(stripped)
            except (ValueError, RecursionError):
                value = None
            if _looks_textual(value):
                return _Invalid(_CSV_MESSAGES)
            if kind in ("text", "name") or (value is None and column == "prompt"):
                return text
            if value is None:
                return _Invalid(f"unparseable list {short_repr(stripped)}")
            return value
        if column == "prompt" or kind in ("text", "name"):
            return text
        number = _csv_number(text)
        if isinstance(number, _Invalid) and kind == "auto":
            return text  # a text item (or a name): validated as such
        return number
    if column in ("y", "label", "weight", *_COUNTS):
        return _csv_number(text)
    if column == "tie":
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        return _Invalid(f"must be true/false or 1/0, got {short_repr(text)}")
    if column == "annotator_id":
        parsed = text.strip()
        return int(parsed) if _INT_TEXT.fullmatch(parsed) else parsed
    return text


def _csv_has_text_items(path, header: list[str]) -> bool:
    """Whether some item cell of the CSV file is text: not empty, not a number, not a list."""
    positions = [k for k, h in enumerate(header) if h in ("xa", "xb", "chosen", "rejected")]
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
        reader = csv.reader(handle)
        next(reader, None)
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return False
            except csv.Error:
                continue
            for k in positions:
                text = cells[k].strip() if k < len(cells) else ""
                if text and not text.startswith("[") and isinstance(_csv_number(text), _Invalid):
                    return True


class _Refused(Exception):
    """Arrow's engine refused the file: read it again on the row-by-row path."""


def _csv_record_lines(path) -> np.ndarray | None:
    """1-based line of each data record, or ``None`` when record ``i`` is line ``i + 2`` (no blank
    line and no quoted field holding a line break: every line holds an even number of quotes)."""
    simple, tail = True, b""
    with open(path, "rb") as handle:
        while simple:
            block = handle.read(_BLOCK_BYTES)
            if not block and not tail:
                break
            data = tail + block
            cut = data.rfind(b"\n") + 1
            if cut == 0 and block:
                tail = data
                continue
            whole, tail = (data[:cut], data[cut:]) if block else (data, b"")
            simple = b"\n\n" not in whole and b"\n\r\n" not in whole
            if simple and b'"' in whole:
                codes = np.frombuffer(whole, dtype=np.uint8)
                line_of_quote = np.searchsorted(
                    np.flatnonzero(codes == 10), np.flatnonzero(codes == 34)
                )
                simple = not bool((np.bincount(line_of_quote) % 2).any())
    if simple:
        return None
    lines = []
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
        reader = csv.reader(handle)
        next(reader, None)
        previous = reader.line_num
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as error:
                raise _Refused from error
            if cells:
                lines.append(previous + 1)
            previous = reader.line_num
    return np.asarray(lines, dtype=np.int64)


def _read_csv_arrow(path, builder: _Builder, chunk_rows: int | None, columns) -> None:
    """Parse with ``pyarrow.csv.read_csv`` (a file of at most 256 MiB with ``chunk_rows=None``)
    or ``pyarrow.csv.open_csv`` (streamed); raise :class:`_Refused` when Arrow refuses the file
    (a record with the wrong number of fields, a type that changes)."""
    header = _csv_header(path, builder, columns)
    try:
        import pyarrow as pa
        import pyarrow.csv as pacsv
    except ImportError:  # pragma: no cover - pyarrow is optional for CSV
        raise _Refused from None
    lines = _csv_record_lines(path)
    strings = ["prompt"] + (
        ["xa", "xb", "chosen", "rejected"] if builder.kind in ("text", "name") else []
    )
    whole = chunk_rows is None and os.path.getsize(path) <= _WHOLE_BYTES
    chunk_rows = chunk_rows or _CHUNK_ROWS
    convert = pacsv.ConvertOptions(
        column_types={n: pa.string() for n in strings if n in header},
        null_values=[""],
        strings_can_be_null=True,
    )
    try:
        if whole:  # Arrow's multithreaded reader, then one vectorized pass
            table = pacsv.read_csv(
                path,
                read_options=pacsv.ReadOptions(column_names=header, skip_rows=1),
                convert_options=convert,
            )
            reader, chunk_rows = [table], max(table.num_rows, 1)
        else:
            reader = pacsv.open_csv(
                path,
                read_options=pacsv.ReadOptions(
                    column_names=header, skip_rows=1, block_size=max(1 << 20, 64 * chunk_rows)
                ),
                convert_options=convert,
            )
        count = 0
        for batch in reader:
            for start in range(0, batch.num_rows, chunk_rows):
                part = batch.slice(start, chunk_rows)
                if lines is None:
                    rows = np.arange(count + 2, count + 2 + part.num_rows, dtype=np.int64)
                else:
                    rows = lines[count : count + part.num_rows]
                    if rows.size != part.num_rows:
                        raise _Refused
                count += part.num_rows
                _add_csv_batch(builder, part, header, rows)
        if lines is not None and count != lines.size:
            raise _Refused
    except (pa.ArrowException, UnicodeDecodeError) as error:
        raise _Refused from error


def _add_csv_batch(builder: _Builder, batch, header: list[str], rows: np.ndarray) -> None:
    """A CSV batch: numeric columns straight to the vectorized path; text cells as the
    row-by-row CSV parser reads them."""
    import pyarrow.types as types

    texts = [
        n
        for n, c in zip(header, batch.columns, strict=True)
        if n in _KNOWN and types.is_string(c.type)
    ]
    if not texts:
        builder.add_arrow_batch(batch, header, rows)
        return
    kind = builder.kind
    items = [n for n in texts if n in ("xa", "xb", "chosen", "rejected")]
    if kind == "auto" and not builder.csv_text:
        for name in items:
            for value in batch.column(header.index(name)).to_pylist():
                text = None if value is None else value.strip()
                if text and not text.startswith("[") and isinstance(_csv_number(text), _Invalid):
                    builder.csv_text = True
                    break
    if builder.csv_text:
        kind = "text"
    data = [c.to_pylist() for c in batch.columns]
    records = []
    for i in range(batch.num_rows):
        record = {}
        for name, column in zip(header, data, strict=True):
            value = column[i]
            if isinstance(value, str) and name in _KNOWN:
                value = _csv_cell(name, value, kind)
            record[name] = value
        records.append(record)
    builder.add_rows(rows.tolist(), records, {})


def _csv_header(path, builder: _Builder, columns) -> list[str]:
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader)
        except StopIteration:
            raise ValueError(f"{builder.source} is empty: a CSV file needs a header row.") from None
        except csv.Error as error:
            raise ValueError(f"{builder.source}: unreadable CSV header: {error}") from None
    original = [h.strip() for h in header]
    header = _renamed(original, columns)
    has_pair = {"xa", "xb"} <= set(header) or {"chosen", "rejected"} <= set(header)
    if not has_pair:
        raise ValueError(
            f"{builder.source} has no item columns: the header must hold 'xa' and 'xb' "
            f"(or 'chosen' and 'rejected'). Got {header}."
        )
    _check_unique(header, original, builder.source)
    return header


def _read_csv(path, builder: _Builder, chunk_rows: int | None, columns) -> None:
    chunk_rows = chunk_rows or _CHUNK_ROWS
    csv.field_size_limit(2**31 - 1)
    header = _csv_header(path, builder, columns)
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
        reader = csv.reader(handle)
        next(reader)  # the header, read and checked above
        kind = builder.kind
        if kind == "auto" and _csv_has_text_items(path, header):
            kind = "text"  # one non-numeric item cell makes every item cell text, as in Arrow

        def records():
            while True:
                row = reader.line_num + 1  # the 1-based line where the next record starts
                try:
                    cells = next(reader)
                except StopIteration:
                    return
                except csv.Error as error:
                    yield row, None, f"unreadable CSV record: {error}"
                    continue
                if cells:
                    yield row, cells, None

        for chunk in _chunks(records(), chunk_rows):
            rows, out, pre = [], [], {}
            for i, (row, cells, error) in enumerate(chunk):
                rows.append(row)
                if error is not None:
                    out.append(None)
                    pre[i] = [Problem(row, None, error)]
                elif len(cells) != len(header):
                    out.append(None)
                    pre[i] = [
                        Problem(
                            row,
                            None,
                            f"record has {len(cells)} field(s), the header has {len(header)}",
                        )
                    ]
                else:
                    out.append(
                        {h: _csv_cell(h, c, kind) for h, c in zip(header, cells, strict=True)}
                    )
            builder.add_records(rows, out, pre)


def _read_parquet(path, builder: _Builder, chunk_rows: int | None, columns) -> None:
    pa = _require_pyarrow()
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises several types (ArrowInvalid, OSError)
        raise ValueError(f"{builder.source} is not a readable Parquet file: {error}") from None
    names = _renamed(file.schema_arrow.names, columns)
    _check_unique(names, file.schema_arrow.names, builder.source)
    if not ({"xa", "xb"} <= set(names) or {"chosen", "rejected"} <= set(names)):
        raise ValueError(
            f"{builder.source} has no item columns: it must hold 'xa' and 'xb' (or 'chosen' "
            f"and 'rejected'). Got {names}."
        )
    wanted = [k for k, name in enumerate(names) if name in _KNOWN]
    builder.seen_columns.update(names)
    file_names = file.schema_arrow.names
    names = [names[k] for k in wanted]
    row = 0
    metadata = file.metadata
    size = sum(metadata.row_group(k).total_byte_size for k in range(metadata.num_row_groups))
    if chunk_rows is None and size <= _WHOLE_BYTES:  # one read, one vectorized pass
        try:
            table = file.read(columns=[file_names[k] for k in wanted])
        except Exception as error:  # corrupt pages
            raise ValueError(f"{builder.source}: cannot read the Parquet rows: {error}") from None
        batches = iter([table])
    else:
        batches = file.iter_batches(
            batch_size=chunk_rows or _CHUNK_ROWS, columns=[file_names[k] for k in wanted]
        )
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as error:  # corrupt pages
            raise ValueError(
                f"{builder.source}: cannot read the Parquet rows after row {row}: {error}"
            ) from None
        try:
            builder.add_arrow_batch(
                batch, names, np.arange(row, row + batch.num_rows, dtype=np.int64)
            )
        except pa.ArrowException as error:  # a column type that cannot become Python values
            raise ValueError(
                f"{builder.source}: cannot convert rows {row} to {row + batch.num_rows - 1}: "
                f"{error}"
            ) from None
        row += batch.num_rows


def read_preferences(
    source,
    *,
    format: str | None = None,
    items: str = "auto",
    on_error: str = "raise",
    chunk_rows: int | None = None,
    columns: Mapping[str, str | None] | None = None,
    allow_missing: bool = False,
) -> ReadResult:
    """Read comparisons from a JSON Lines, CSV or Parquet file.

    Args:
        source: path (str or ``os.PathLike``) of the file.
        format: ``"jsonl"``, ``"csv"`` or ``"parquet"``; inferred from the suffix (``.jsonl``,
            ``.json-lines``, ``.ndjson``, ``.csv``, ``.parquet``, ``.pq``) when ``None``.
        items: ``"auto"``, ``"id"``, ``"number"``, ``"vector"``, ``"tokens"``, ``"text"`` or
            ``"name"`` (see the module docstring).
        on_error: ``"raise"`` (a ``ValueError`` listing every problem) or ``"drop"`` (drop the
            rows with problems; they are counted and described in the result).
        chunk_rows: rows parsed per chunk (Parquet record batch, JSON Lines/CSV line batch);
            ``None`` (default): CSV and Parquet files whose data take at most 256 MiB are read
            and validated at once (Arrow's multithreaded readers, one vectorized pass), other
            files in chunks of 65536 rows (JSON Lines: lines).
        columns: optional renaming ``{file column: pbde name}``, e.g. ``{"response_a": "xa"}``;
            a column mapped to ``None`` is ignored without the misspelling check (``{"tiee":
            None}`` keeps a column ``tiee`` from being taken for a misspelled ``tie``).
        allow_missing: read a null or NaN ``weight`` / ``annotator_id`` (and ``ties``) as
            absent instead of a problem of its row (see the module docstring).

    Returns:
        A :class:`ReadResult`; ``.prefs`` goes to :func:`pbde.fit`.

    Raises:
        ValueError: on invalid rows (``on_error="raise"``), when no valid row is left, or when
            the file is unreadable; the message names the file, the rows and the columns.
        FileNotFoundError: if ``source`` does not exist.
        ImportError: for Parquet without pyarrow.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "prefs.jsonl"
        >>> _ = path.write_text('{"xa": 0, "xb": 2, "y": 1}\\n{"chosen": 1, "rejected": 0}\\n')
        >>> read_preferences(path).prefs.y
        tensor([1., 1.])
    """
    _check_options(items, on_error, chunk_rows, allow_missing)
    _check_columns(columns)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            f"'source' must be a path (str or os.PathLike). Got {type(source).__name__}; use "
            f"from_records or from_dataframe for in-memory data."
        )
    path = os.fspath(source)
    fmt = _resolve_format(path, format)
    if not os.path.exists(path):
        raise FileNotFoundError(f"'source' {path!r} does not exist.")
    numbering = {
        "jsonl": "rows are 1-based line numbers",
        "csv": "rows are 1-based line numbers, the header being line 1",
        "parquet": "rows are 0-based",
    }[fmt]
    source_name = f"{fmt.upper() if fmt != 'jsonl' else 'JSONL'} file {path!r}"
    silenced = _silenced(columns)
    builder = _Builder(items, on_error, source_name, numbering, allow_missing, silenced)
    builder.private = True  # the Arrow buffers read here belong to nobody else
    reader = {"jsonl": _read_jsonl, "csv": _read_csv_arrow, "parquet": _read_parquet}[fmt]
    try:
        try:
            reader(path, builder, chunk_rows, columns)
        except _Refused:  # start again on the row-by-row path, which names the bad lines
            builder = _Builder(items, on_error, source_name, numbering, allow_missing, silenced)
            _read_csv(path, builder, chunk_rows, columns)
    except OSError as error:
        raise ValueError(f"{builder.source} cannot be read: {error}") from None
    return builder.finish()


def from_records(
    records,
    *,
    items: str = "auto",
    on_error: str = "raise",
    chunk_rows: int = 65536,
    columns: Mapping[str, str | None] | None = None,
    allow_missing: bool = False,
) -> ReadResult:
    """Comparisons from a list (or iterable) of dicts, e.g. a Hugging Face dataset split.

    Each record has the columns of the module docstring: ``{"xa", "xb", "y"}`` or
    ``{"prompt", "chosen", "rejected"}`` (items already tokenized or numeric), plus the
    optional ``tie``, ``annotator_id``, ``weight``; ``columns`` renames keys as in
    :func:`read_preferences` (``{"response_j": "chosen", "response_k": "rejected"}``).

    Example:
        >>> out = from_records([{"prompt": [5], "chosen": [1, 2], "rejected": [3]}])
        >>> out.prefs.xb, out.prompts
        (tensor([[ 3, -1]]), [[5]])
    """
    _check_options(items, on_error, chunk_rows, allow_missing)
    _check_columns(columns)
    if isinstance(records, (str, bytes, Mapping)) or not isinstance(records, Iterable):
        raise TypeError(f"'records' must be an iterable of dicts. Got {type(records).__name__}.")
    builder = _Builder(
        items, on_error, "records", "rows are 0-based positions", allow_missing, _silenced(columns)
    )
    for start, chunk in enumerate(_chunks(records, chunk_rows)):
        rows = list(range(start * chunk_rows, start * chunk_rows + len(chunk)))
        pre, clean = {}, []
        for i, record in enumerate(chunk):
            if isinstance(record, Mapping):
                clean.append(_rename({str(k): v for k, v in record.items()}, columns, "records"))
            else:
                clean.append(None)
                pre[i] = [Problem(rows[i], None, f"not a dict: {type(record).__name__}")]
        builder.add_rows(rows, clean, pre)
    return builder.finish()


def from_dataframe(
    df,
    *,
    items: str = "auto",
    on_error: str = "raise",
    chunk_rows: int | None = None,
    columns: Mapping[str, str | None] | None = None,
    allow_missing: bool = False,
) -> ReadResult:
    """Comparisons from a pandas or polars DataFrame with the columns of the module docstring
    (``columns`` renames them as in :func:`read_preferences`).

    The columns go to Arrow (without copying where their types allow) and are validated as
    :func:`from_arrow` does; a pandas column that Arrow cannot type (mixed Python objects) is read
    row by row. Row numbers are 0-based positions (not index labels). Missing values (``None``,
    ``pd.NA``) count as missing fields; a NaN in a float ``annotator_id`` or ``weight`` column is
    missing (a problem of its row unless ``allow_missing=True``), a NaN item or label is a
    problem.

    Raises:
        TypeError: if ``df`` is neither a pandas nor a polars DataFrame.
        ValueError: as :func:`read_preferences`.
    """
    _check_options(items, on_error, chunk_rows, allow_missing)
    _check_columns(columns)
    options = (items, on_error, chunk_rows, allow_missing, columns)
    if type(df).__module__.startswith("polars") and type(df).__name__ == "DataFrame":
        return _from_table(df.to_arrow(), *options, "polars DataFrame")
    pd = _require_pandas()
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"'df' must be a pandas DataFrame. Got {type(df).__name__}.")
    original = [str(c) for c in df.columns]
    names = _renamed(original, columns)
    _check_unique(names, original, "DataFrame")
    pa = _require_pyarrow()
    try:  # from_pandas=False: a NaN stays a NaN (a problem in an item or a label), not a null
        table = pa.table(
            [pa.array(df.iloc[:, k], from_pandas=False) for k in range(df.shape[1])],
            names=original,  # renamed in _from_table
        )
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        table = None
    if table is not None:
        return _from_table(table, *options, "DataFrame")
    builder = _Builder(
        items,
        on_error,
        "DataFrame",
        "rows are 0-based positions",
        allow_missing,
        _silenced(columns),
    )
    chunk_rows = chunk_rows or _CHUNK_ROWS
    for start in range(0, len(df), chunk_rows):
        part = df.iloc[start : start + chunk_rows]
        data = [part.iloc[:, k].tolist() for k in range(part.shape[1])]
        records = [
            {n: col[i] for n, col in zip(names, data, strict=True)} for i in range(len(part))
        ]
        builder.add_rows(list(range(start, start + len(part))), records, {})
    return builder.finish()


def from_arrow(
    table,
    *,
    items: str = "auto",
    on_error: str = "raise",
    chunk_rows: int | None = None,
    columns: Mapping[str, str | None] | None = None,
    allow_missing: bool = False,
) -> ReadResult:
    """Comparisons from a ``pyarrow.Table`` or ``RecordBatch``, or a Hugging Face
    ``datasets.Dataset`` (its Arrow table, through ``with_format("arrow")``), with the columns of
    the module docstring. The columns are validated where they lie, without a copy to Python
    values for numeric columns; row numbers are 0-based positions.

    Args:
        table: the data.
        items: as in :func:`read_preferences`.
        on_error: as in :func:`read_preferences`.
        chunk_rows: rows validated per record batch; ``None`` (default): the whole table in one
            vectorized pass.
        columns: as in :func:`read_preferences` (the table itself is not changed).
        allow_missing: as in :func:`read_preferences`.

    Returns:
        A :class:`ReadResult`.

    Raises:
        TypeError: if ``table`` is none of these types.
        ValueError: as :func:`read_preferences`.
    """
    _check_options(items, on_error, chunk_rows, allow_missing)
    _check_columns(columns)
    pa = _require_pyarrow()
    source = "Arrow table"
    if hasattr(table, "with_format") and hasattr(table, "features"):  # datasets.Dataset
        table, source = table.with_format("arrow")[:], "Dataset"
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    if not isinstance(table, pa.Table):
        raise TypeError(
            f"'table' must be a pyarrow.Table, a pyarrow.RecordBatch or a datasets.Dataset. Got "
            f"{type(table).__name__}."
        )
    return _from_table(table, items, on_error, chunk_rows, allow_missing, columns, source)


def _from_table(
    table,
    items: str,
    on_error: str,
    chunk_rows: int | None,
    allow_missing: bool,
    columns: Mapping[str, str | None] | None,
    source: str,
) -> ReadResult:
    original = [str(n) for n in table.column_names]
    names = _renamed(original, columns)
    _check_unique(names, original, source)
    if names != original:
        table = table.rename_columns(names)  # a new table over the same buffers
    if not ({"xa", "xb"} <= set(names) or {"chosen", "rejected"} <= set(names)):
        raise ValueError(
            f"{source} has no item columns: it must hold 'xa' and 'xb' (or 'chosen' and "
            f"'rejected'). Got {names}."
        )
    builder = _Builder(
        items, on_error, source, "rows are 0-based positions", allow_missing, _silenced(columns)
    )
    builder.seen_columns.update(names)
    if chunk_rows is None:  # one vectorized pass over the whole table
        builder.add_arrow_batch(table, names, np.arange(table.num_rows, dtype=np.int64))
        return builder.finish()
    row = 0
    for batch in table.to_batches(max_chunksize=chunk_rows):
        builder.add_arrow_batch(batch, names, np.arange(row, row + batch.num_rows, dtype=np.int64))
        row += batch.num_rows
    return builder.finish()


# -- writers ------------------------------------------------------------------------------


def _item_lists(x: torch.Tensor) -> tuple[str, Any]:
    """The item kind of a tensor, for writing."""
    if x.ndim == 1:
        return ("number" if x.is_floating_point() else "id"), None
    if x.ndim == 2:
        return ("vector" if x.is_floating_point() else "tokens"), None
    raise ValueError(
        f"write_preferences writes scalar items or 1-D items (vectors, token ids); got items "
        f"of shape {tuple(x.shape[1:])}."
    )


def _rows_of(x: torch.Tensor, kind: str) -> list:
    values = x.detach().cpu()
    if kind == "tokens":
        out = []
        for row in values.tolist():
            while row and row[-1] == PAD_TOKEN:
                row.pop()
            out.append(row)
        return out
    if kind in ("number", "vector"):
        return values.double().tolist()
    return values.tolist()


def write_preferences(
    prefs: Preferences | TextPreferences, path, *, format: str | None = None
) -> None:
    """Write comparisons to a JSON Lines, CSV or Parquet file (columns ``xa``, ``xb``, ``y``, and
    ``annotator_id`` and ``weight`` when the data have them).

    A :class:`~pbde.TextPreferences` is written as the records of its
    :meth:`~pbde.TextPreferences.to_records` (``prompt``, ``chosen``/``rejected`` or
    ``xa``/``xb``/``y``, ...); conversational data cannot be written as CSV.

    Integer items of shape ``(n,)`` are written as ids, float items as numbers, float ``(n, d)``
    as vectors (lists), integer ``(n, L)`` as token lists with the trailing :data:`PAD_TOKEN`
    padding removed. :func:`read_preferences` gives back the same ``xa``, ``xb``, ``y``,
    ``annotator_id`` and ``weight`` (token tensors are re-padded to the longest sequence, so a tensor with
    padding in every row comes back narrower).

    Raises:
        TypeError: if ``prefs`` is neither a :class:`~pbde.Preferences` nor a
            :class:`~pbde.TextPreferences`.
        ValueError: for items of more than one dimension, negative token ids other than
            trailing padding, or an unknown format.
    """
    if isinstance(prefs, TextPreferences):
        path = os.fspath(path)
        _write_text(prefs, path, _resolve_format(path, format))
        return
    if not isinstance(prefs, Preferences):
        raise TypeError(
            f"'prefs' must be a pbde.Preferences or pbde.TextPreferences. Got "
            f"{type(prefs).__name__}."
        )
    path = os.fspath(path)
    fmt = _resolve_format(path, format)
    kind, _ = _item_lists(prefs.xa)
    n = len(prefs)
    ids, weights = prefs.annotator_id, prefs.weight
    chunk = 65536
    if fmt == "parquet":
        _write_parquet(prefs, path, kind)
        return
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = None
        if fmt == "csv":
            writer = csv.writer(handle)
            header = ["xa", "xb", "y"] + ([] if ids is None else ["annotator_id"])
            writer.writerow(header + ([] if weights is None else ["weight"]))
        for start in range(0, n, chunk):
            part = prefs[start : start + chunk]
            xa, xb = _rows_of(part.xa, kind), _rows_of(part.xb, kind)
            _check_tokens(xa + xb, kind)
            y = part.y.detach().cpu().double().tolist()
            aid = None if ids is None else part.annotator_id.cpu().tolist()
            w = None if weights is None else part.weight.detach().cpu().double().tolist()
            for i in range(len(y)):
                if fmt == "jsonl":
                    record = {"xa": xa[i], "xb": xb[i], "y": y[i]}
                    if aid is not None:
                        record["annotator_id"] = aid[i]
                    if w is not None:
                        record["weight"] = w[i]
                    handle.write(json.dumps(record) + "\n")
                else:
                    cells = [_csv_text(xa[i]), _csv_text(xb[i]), repr(y[i])]
                    if aid is not None:
                        cells.append(str(aid[i]))
                    if w is not None:
                        cells.append(repr(w[i]))
                    writer.writerow(cells)


def _write_text(prefs: TextPreferences, path: str, fmt: str) -> None:
    """Write text comparisons as the records of :meth:`TextPreferences.to_records`."""
    records = prefs.to_records()
    if fmt == "parquet":
        pa = _require_pyarrow()
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), path, row_group_size=65536)
        return
    if fmt == "csv" and prefs.conversational:
        raise ValueError(
            f"Cannot write {path!r} as CSV: {_CSV_MESSAGES} (the data are conversational)."
        )
    with open(path, "w", encoding="utf-8", newline="") as handle:
        if fmt == "jsonl":
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            return
        writer = csv.DictWriter(handle, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)


def _check_tokens(rows, kind):
    if kind == "tokens":
        for row in rows:
            if not row:
                raise ValueError(
                    f"Every token sequence must hold at least one token; one is all padding "
                    f"({PAD_TOKEN})."
                )
            if row and min(row) < 0:
                raise ValueError(
                    f"Token ids must be >= 0 ({PAD_TOKEN} is only trailing padding). Got {min(row)}."
                )


def _csv_text(value) -> str:
    if isinstance(value, list):
        return json.dumps(value)
    return repr(value)


def _write_parquet(prefs: Preferences, path: str, kind: str) -> None:
    pa = _require_pyarrow()
    import pyarrow.parquet as pq

    def column(x: torch.Tensor):
        values = x.detach().cpu()
        if kind == "id":
            return pa.array(values.long().numpy())
        if kind == "number":
            return pa.array(values.double().numpy())
        if kind == "vector":
            flat = values.double().reshape(-1).numpy()
            return pa.FixedSizeListArray.from_arrays(pa.array(flat), values.shape[1])
        array = values.long().numpy()
        content = array != PAD_TOKEN
        width = array.shape[1]
        lengths = np.where(content.any(1), width - content[:, ::-1].argmax(1), 0)
        if bool((lengths == 0).any()):
            raise ValueError(
                f"Every token sequence must hold at least one token; row "
                f"{int(np.flatnonzero(lengths == 0)[0])} is all padding ({PAD_TOKEN})."
            )
        # trailing padding only: every kept element precedes every pad
        mask = np.arange(array.shape[1])[None, :] < lengths[:, None]
        if bool((array[mask] < 0).any()):
            raise ValueError(
                f"Token ids must be >= 0 ({PAD_TOKEN} is only trailing padding). "
                f"Got {int(array[mask].min())}."
            )
        offsets = np.zeros(array.shape[0] + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(array[mask]))

    data = {
        "xa": column(prefs.xa),
        "xb": column(prefs.xb),
        "y": pa.array(prefs.y.double().cpu().numpy()),
    }
    if prefs.annotator_id is not None:
        data["annotator_id"] = pa.array(prefs.annotator_id.long().cpu().numpy())
    if prefs.weight is not None:
        data["weight"] = pa.array(prefs.weight.detach().double().cpu().numpy())
    pq.write_table(pa.table(data), path, row_group_size=65536)
