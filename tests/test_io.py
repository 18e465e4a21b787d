"""pbde.io: readers and writers of preference data.

Expected values are written out by hand (or taken from the tensors that were written), never
from the reader itself. Malformed input is generated with Hypothesis: a reader either parses it
into labels that match an independent oracle, or raises a ValueError that names rows.
"""

from __future__ import annotations

import json
import math
import re
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pbde
from pbde import io

pd = pytest.importorskip("pandas")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

FORMATS = ["jsonl", "csv", "parquet"]
FAST = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def items_of(kind: str, n: int, generator: torch.Generator):
    if kind == "id":
        return torch.randint(-5, 50, (n,), generator=generator), torch.randint(
            0, 50, (n,), generator=generator
        )
    if kind == "number":
        return torch.randn(n, generator=generator) * 100, torch.randn(n, generator=generator)
    if kind == "vector":
        return torch.randn(n, 3, generator=generator), torch.randn(n, 3, generator=generator)
    # tokens: random lengths 1..5, padded with -1; the longest row is full
    lengths = torch.randint(1, 6, (2, n), generator=generator)
    lengths[0, 0] = 5
    tokens = torch.randint(0, 1000, (2, n, 5), generator=generator)
    tokens[torch.arange(5) >= lengths[..., None]] = -1
    return tokens[0], tokens[1]


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# -- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", ["id", "number", "vector", "tokens"])
@pytest.mark.parametrize("with_ids", [True, False])
def test_round_trip(tmp_path, generator, fmt, kind, with_ids):
    n = 23
    xa, xb = items_of(kind, n, generator)
    y = torch.rand(n, generator=generator)
    y[:3] = torch.tensor([0.0, 1.0, 0.5])
    ids = torch.randint(0, 4, (n,), generator=generator) if with_ids else None
    prefs = pbde.Preferences(xa, xb, y, ids)
    path = tmp_path / f"prefs.{fmt}"
    io.write_preferences(prefs, path)
    result = io.read_preferences(path)
    assert result.items == kind
    assert result.dropped == 0 and result.problems == []
    for name in ("xa", "xb", "y"):
        expected, got = getattr(prefs, name), getattr(result.prefs, name)
        assert got.dtype == expected.dtype, name
        assert torch.equal(got, expected), name
    if with_ids:
        assert torch.equal(result.prefs.annotator_id, ids)
    else:
        assert result.prefs.annotator_id is None
    first = {"jsonl": 1, "csv": 2, "parquet": 0}[fmt]  # line numbers, header = line 1; positions
    assert result.rows.tolist() == list(range(first, first + n))
    assert result.weights is None and result.prompts is None and result.annotator_names is None


def test_format_option_overrides_suffix(tmp_path):
    prefs = pbde.Preferences(torch.tensor([1, 2]), torch.tensor([3, 4]), torch.tensor([1.0, 0.0]))
    path = tmp_path / "data.txt"
    io.write_preferences(prefs, path, format="csv")
    assert path.read_text().splitlines()[0] == "xa,xb,y"
    assert torch.equal(io.read_preferences(path, format="csv").prefs.xa, prefs.xa)
    with pytest.raises(ValueError, match="Cannot infer the format.*'.txt'"):
        io.read_preferences(path)


def test_tokens_are_padded_with_minus_one_to_the_longest_of_both_sides(tmp_path):
    path = write_lines(
        tmp_path / "t.jsonl",
        [
            json.dumps({"xa": [1, 2], "xb": [3], "y": 1}),
            json.dumps({"xa": [4], "xb": [5, 6, 7, 8], "y": 0}),
        ],
    )
    result = io.read_preferences(path)
    assert io.PAD_TOKEN == -1
    assert result.items == "tokens"
    assert result.prefs.xa.tolist() == [[1, 2, -1, -1], [4, -1, -1, -1]]
    assert result.prefs.xb.tolist() == [[3, -1, -1, -1], [5, 6, 7, 8]]
    assert result.prefs.xa.dtype == torch.int64


def test_auto_kinds_and_explicit_kinds(tmp_path):
    lines = [json.dumps({"xa": 1, "xb": 2.5, "y": 1}), json.dumps({"xa": 3, "xb": 4, "y": 0})]
    path = write_lines(tmp_path / "a.jsonl", lines)
    auto = io.read_preferences(path)
    assert auto.items == "number"  # one float makes every scalar a number
    assert auto.prefs.xb.tolist() == [2.5, 4.0]
    assert auto.prefs.xa.dtype == torch.get_default_dtype()
    with pytest.raises(ValueError, match=r"row 1, column 'xb': id must be an integer"):
        io.read_preferences(path, items="id")
    ints = write_lines(tmp_path / "i.jsonl", [json.dumps({"xa": 1, "xb": 2, "y": 1})])
    assert io.read_preferences(ints, items="number").prefs.xa.dtype == torch.float32
    vec = write_lines(tmp_path / "v.jsonl", [json.dumps({"xa": [1, 2], "xb": [3, 4], "y": 1})])
    assert io.read_preferences(vec).items == "tokens"  # lists of ints are token ids
    as_vector = io.read_preferences(vec, items="vector")
    assert as_vector.items == "vector" and as_vector.prefs.xa.tolist() == [[1.0, 2.0]]
    with pytest.raises(ValueError, match=r"items are 'tokens' \(lists\)"):
        io.read_preferences(ints, items="tokens")


# -- conventions: chosen/rejected, ties, soft labels, annotators, weights --------------------


def test_prompt_chosen_rejected_records():
    records = [
        {"prompt": [7, 8], "chosen": [1, 2, 3], "rejected": [4]},
        {"prompt": [9], "chosen": [5], "rejected": [6, 6]},
    ]
    result = io.from_records(records)
    assert result.prefs.xa.tolist() == [[1, 2, 3], [5, -1, -1]]
    assert result.prefs.xb.tolist() == [[4, -1, -1], [6, 6, -1]]
    assert result.prefs.y.tolist() == [1.0, 1.0]
    assert result.prompts == [[7, 8], [9]]


def test_chosen_rejected_jsonl_with_text_prompt_and_tie(tmp_path):
    path = write_lines(
        tmp_path / "hf.jsonl",
        [
            json.dumps({"prompt": "Hi?", "chosen": 3, "rejected": 1}),
            json.dumps({"prompt": "Yo?", "chosen": 2, "rejected": 0, "tie": True}),
        ],
    )
    result = io.read_preferences(path)
    assert result.prefs.xa.tolist() == [3, 2]
    assert result.prefs.y.tolist() == [1.0, 0.5]
    assert result.prompts == ["Hi?", "Yo?"]


def test_chosen_rejected_with_label_is_an_error():
    with pytest.raises(ValueError, match=r"row 0, column 'y': a 'chosen'/'rejected' row cannot"):
        io.from_records([{"chosen": 1, "rejected": 2, "y": 0.0}])


def test_ties_and_soft_labels(tmp_path):
    path = tmp_path / "soft.csv"
    path.write_text("xa,xb,label,tie\n1,2,0.25,\n3,4,,true\n5,6,0.5,1\n7,8,1,false\n")
    result = io.read_preferences(path)
    assert result.prefs.y.tolist() == [0.25, 0.5, 0.5, 1.0]
    with pytest.raises(ValueError, match=r"row 0, column 'y': 'tie' is true but the label is 1.0"):
        io.from_records([{"xa": 1, "xb": 2, "y": 1.0, "tie": True}])
    with pytest.raises(ValueError, match=r"row 0, column 'label': give either 'y' or 'label'"):
        io.from_records([{"xa": 1, "xb": 2, "y": 1.0, "label": 1.0}])
    with pytest.raises(ValueError, match=r"row 0, column 'y': missing field 'y'"):
        io.from_records([{"xa": 1, "xb": 2, "tie": False}])


def test_bool_labels_are_rejected_not_coerced():
    # pyarrow would read [0.5, True] as [0.5, 1.0]; the reader must not
    records = [{"xa": i, "xb": i + 1, "y": 0.5} for i in range(40)]
    records[17]["y"] = True
    with pytest.raises(ValueError, match=r"row 17, column 'y': the label must be a number"):
        io.from_records(records)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_string_annotator_ids_are_mapped_in_order_of_first_appearance(tmp_path, fmt):
    rows = [(1, 2, 1.0, "bob"), (3, 4, 0.0, "alice"), (5, 6, 1.0, "bob"), (7, 8, 0.5, "carol")]
    path = tmp_path / f"ann.{fmt}"
    if fmt == "jsonl":
        write_lines(
            path, [json.dumps({"xa": a, "xb": b, "y": y, "annotator_id": n}) for a, b, y, n in rows]
        )
    else:
        path.write_text(
            "xa,xb,y,annotator_id\n" + "".join(f"{a},{b},{y},{n}\n" for a, b, y, n in rows)
        )
    result = io.read_preferences(path)
    assert result.annotator_names == ["bob", "alice", "carol"]
    assert result.prefs.annotator_id.tolist() == [0, 1, 0, 2]


def test_integer_annotator_ids_and_their_problems():
    result = io.from_records(
        [
            {"xa": 1, "xb": 2, "y": 1, "annotator_id": 7},
            {"xa": 1, "xb": 2, "y": 0, "annotator_id": 0},
        ]
    )
    assert result.prefs.annotator_id.tolist() == [7, 0] and result.annotator_names is None
    records = [
        {"xa": 1, "xb": 2, "y": 1, "annotator_id": 3},
        {"xa": 1, "xb": 2, "y": 1, "annotator_id": "eve"},
        {"xa": 1, "xb": 2, "y": 1},
        {"xa": 1, "xb": 2, "y": 1, "annotator_id": 1.5},
    ]
    out = io.from_records(records, on_error="drop")
    assert [(p.row, p.column) for p in out.problems] == [
        (1, "annotator_id"),
        (2, "annotator_id"),
        (3, "annotator_id"),
    ]
    assert "do not mix names and ints" in out.problems[0].message
    assert "other rows have one" in out.problems[1].message
    assert "non-integer 1.5" in out.problems[2].message
    assert out.prefs.annotator_id.tolist() == [3] and out.dropped == 3


def test_weights():
    records = [{"xa": i, "xb": 0, "y": 1, "weight": w} for i, w in enumerate([0.5, 0, 2])]
    assert io.from_records(records).weights.tolist() == [0.5, 0.0, 2.0]
    records.append({"xa": 9, "xb": 0, "y": 1, "weight": -1})
    records.append({"xa": 9, "xb": 0, "y": 1})
    out = io.from_records(records, on_error="drop")
    assert [(p.row, p.column) for p in out.problems] == [(3, "weight"), (4, "weight")]
    assert out.weights.tolist() == [0.5, 0.0, 2.0]


def test_columns_renaming_and_ignored_columns(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("a,b,pref,extra\n1,2,1,x\n")
    result = io.read_preferences(path, columns={"a": "xa", "b": "xb", "pref": "y"})
    assert result.prefs.xa.tolist() == [1] and result.ignored_columns == ["extra"]
    with pytest.raises(ValueError, match="unknown names"):
        io.read_preferences(path, columns={"a": "x_a"})


def test_from_dataframe():
    df = pd.DataFrame(
        {
            "xa": [0.5, 1.5, 2.5],
            "xb": [1.0, 2.0, 3.0],
            "y": [1.0, 0.0, 0.5],
            "annotator_id": ["u1", "u2", "u1"],
            "note": ["a", "b", "c"],
        },
        index=[10, 20, 30],
    )
    result = io.from_dataframe(df)
    assert result.prefs.xa.tolist() == [0.5, 1.5, 2.5]
    assert result.prefs.annotator_id.tolist() == [0, 1, 0]
    assert result.annotator_names == ["u1", "u2"] and result.ignored_columns == ["note"]
    df.loc[20, "y"] = float("nan")
    with pytest.raises(ValueError, match=r"row 1, column 'y': the label must be finite"):
        io.from_dataframe(df)  # rows are positions, not index labels
    with pytest.raises(TypeError, match="'df' must be a pandas DataFrame"):
        io.from_dataframe({"xa": [1]})


# -- chunking --------------------------------------------------------------------------------


def fifty_rows_with_problems():
    records = []
    for i in range(50):
        records.append({"xa": i * 0.5, "xb": -i, "y": (i % 5) / 4, "annotator_id": i % 3})
    records[3]["y"] = 2.0
    records[13]["xa"] = float("nan")
    del records[14]["xb"]
    records[20]["annotator_id"] = -4
    records[48]["y"] = None
    return records


@pytest.mark.parametrize("fmt", FORMATS)
def test_chunked_reading_matches_one_chunk(tmp_path, fmt):
    records = fifty_rows_with_problems()
    path = tmp_path / f"fifty.{fmt}"
    if fmt == "jsonl":
        write_lines(path, [json.dumps(r) for r in records])
    elif fmt == "csv":
        frame = pd.DataFrame(records)
        frame["annotator_id"] = frame["annotator_id"].astype("Int64")
        frame.to_csv(path, index=False)
    else:
        pq.write_table(pa.Table.from_pylist(records), path, row_group_size=11)
    small = io.read_preferences(path, chunk_rows=7, on_error="drop")
    large = io.read_preferences(path, chunk_rows=1000, on_error="drop")
    bad = [3, 13, 14, 20, 48]
    good = [i for i in range(50) if i not in bad]
    first = {"jsonl": 1, "csv": 2, "parquet": 0}[fmt]
    for result in (small, large):
        assert result.dropped == 5 and result.rows_read == 50
        assert [p.row for p in result.problems] == [first + i for i in bad]
        assert result.rows.tolist() == [first + i for i in good]
        assert result.prefs.xa.tolist() == [i * 0.5 for i in good]
        assert result.prefs.xb.tolist() == [float(-i) for i in good]
        assert result.prefs.y.tolist() == [(i % 5) / 4 for i in good]
        assert result.prefs.annotator_id.tolist() == [i % 3 for i in good]
    assert small.problems == large.problems


# -- validation: every problem, with its row and column --------------------------------------


def test_every_problem_is_listed_jsonl(tmp_path):
    lines = [
        json.dumps({"xa": 1, "xb": 2, "y": 1}),  # 0 ok
        json.dumps({"xa": 1, "y": 1}),  # 1 missing xb
        json.dumps({"xa": 1, "xb": 2, "y": 1.5}),  # 2 label out of range
        '{"xa": 1, "xb": 2, "y": NaN}',  # 3 NaN label
        json.dumps({"xa": 2.5, "xb": 2, "y": 0}),  # 4 non-integer id
        json.dumps({"xa": 1, "xb": 2, "y": 0, "annotator_id": -1}),  # 5 negative annotator
        '{"xa": 1, "xb": ',  # 6 unparseable
        "",  # 7 blank: skipped
        json.dumps([1, 2, 3]),  # 8 not an object
        json.dumps({"xa": 4, "xb": 5, "y": 0.5}),  # 9 ok
        json.dumps({"xa": "a cat", "xb": 2, "y": 1}),  # 10 text
    ]
    path = write_lines(tmp_path / "bad.jsonl", lines)
    with pytest.raises(ValueError) as info:
        io.read_preferences(path, items="id")
    message = str(info.value)
    expected = [  # rows are the file's 1-based line numbers
        (2, "xb", "missing field 'xb'"),
        (3, "y", "must lie in [0, 1]"),
        (4, "y", "must be finite"),
        (5, "xa", "non-integer 2.5"),
        (6, "annotator_id", "must be >= 0, got -1"),
        (7, None, "unparseable JSON line"),
        (9, None, "not a JSON object"),
        (11, "xa", "tokenize text first"),
        # the file has an annotator_id column (line 6): rows without one are problems
        (1, "annotator_id", "missing 'annotator_id'"),
        (10, "annotator_id", "missing 'annotator_id'"),
    ]
    assert "bad.jsonl" in message and "10 problem(s)" in message and "1-based line" in message
    for row, column, text in expected:
        where = f"row {row}" + ("" if column is None else f", column '{column}'")
        assert re.search(re.escape(where) + ": .*" + re.escape(text), message), (where, message)
    # every row is bad when missing ids are problems; with allow_missing the two good rows stay
    with pytest.raises(ValueError, match="has no valid row left: 10 problem"):
        io.read_preferences(path, items="id", on_error="drop")
    dropped = io.read_preferences(path, items="id", on_error="drop", allow_missing=True)
    assert sorted((p.row, p.column) for p in dropped.problems) == sorted(
        (r, c) for r, c, _ in expected[:8]
    )
    assert dropped.dropped == 8 and dropped.rows.tolist() == [1, 10]
    assert dropped.prefs.xa.tolist() == [1, 4] and dropped.prefs.y.tolist() == [1.0, 0.5]
    # the annotator id of row 5 was the only one, and row 5 was dropped: no ids remain
    assert dropped.prefs.annotator_id is None


def test_every_problem_is_listed_for_sequences():
    records = [
        {"xa": [0.5, 1.0], "xb": [1.0, 2.0], "y": 1},  # 0 ok, fixes d = 2
        {"xa": [0.5], "xb": [1.0, 2.0], "y": 1},  # 1 wrong length
        {"xa": [], "xb": [1.0, 2.0], "y": 1},  # 2 empty
        {"xa": [0.5, float("inf")], "xb": [1.0, 2.0], "y": 1},  # 3 inf
        {"xa": 3.0, "xb": [1.0, 2.0], "y": 1},  # 4 scalar among lists
        {"xa": [1.0, 2.0], "xb": [1.0, 2.0, 3.0], "y": 0},  # 5 wrong length in xb
    ]
    out = io.from_records(records, on_error="drop")
    assert out.items == "vector" and len(out.prefs) == 1
    assert [(p.row, p.column) for p in out.problems] == [
        (1, "xa"),
        (2, "xa"),
        (3, "xa"),
        (4, "xa"),
        (5, "xb"),
    ]
    assert "length 1, expected 2" in out.problems[0].message
    assert "empty sequence" in out.problems[1].message
    assert "finite" in out.problems[2].message
    assert "items are lists (fixed by row 0)" in out.problems[3].message
    tokens = [{"chosen": [1], "rejected": []}, {"chosen": [2, -1], "rejected": [1]}]
    out = io.from_records(
        tokens + [{"chosen": [1], "rejected": [2]}], items="tokens", on_error="drop"
    )
    assert [(p.row, p.column) for p in out.problems] == [(0, "rejected"), (1, "chosen")]
    assert "token ids must be >= 0" in out.problems[1].message


def test_csv_rows_are_line_numbers_with_the_header_line_1(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text('xa,xb,y\n1,2,1\n1,2,abc\n1,2\n"[1, 2",2,1\n\n1,2,0.5\n"[1,\n2]",3,x\n5,6,1\n')
    with pytest.raises(ValueError) as info:
        io.read_preferences(path)
    message = str(info.value)
    assert "header being line 1" in message and "5 problem(s)" in message
    assert "row 3, column 'y': not a number: 'abc'" in message
    assert "row 4: record has 2 field(s), the header has 3" in message
    assert "row 5, column 'xa': unparseable list" in message
    assert "row 8, column 'xa': items are scalars (fixed by row 2), got [1, 2]" in message
    assert "row 8, column 'y': not a number: 'x'" in message  # a record over lines 8 and 9
    assert io.read_preferences(path, on_error="drop").rows.tolist() == [2, 7, 10]


def test_message_lists_first_20_and_counts_the_rest():
    records = [{"xa": 1, "xb": 2, "y": 2.0 + i} for i in range(25)]
    with pytest.raises(ValueError) as info:
        io.from_records(records)
    message = str(info.value)
    assert "25 problem(s)" in message and "... and 5 more" in message
    assert "row 19," in message and "row 20," not in message


def test_nothing_left_after_dropping():
    with pytest.raises(ValueError, match="has no valid row left"):
        io.from_records([{"xa": 1, "xb": 2}], on_error="drop")


# -- files and arguments that are wrong as a whole --------------------------------------------


def test_whole_file_errors(tmp_path):
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not a parquet file at all")
    with pytest.raises(ValueError, match="junk.parquet' is not a readable Parquet file"):
        io.read_preferences(junk)
    no_items = tmp_path / "no_items.csv"
    no_items.write_text("a,y\n1,1\n")
    with pytest.raises(ValueError, match="no_items.csv' has no item columns"):
        io.read_preferences(no_items)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty.csv' is empty"):
        io.read_preferences(empty)
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n\n")
    with pytest.raises(ValueError, match="holds no comparison"):
        io.read_preferences(blank)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        io.read_preferences(tmp_path / "missing.jsonl")
    with pytest.raises(TypeError, match="'source' must be a path"):
        io.read_preferences([{"xa": 1}])
    with pytest.raises(ValueError, match="'items' must be one of"):
        io.from_records([], items="words")
    with pytest.raises(ValueError, match="'on_error' must be 'raise' or 'drop'"):
        io.from_records([], on_error="skip")
    with pytest.raises(ValueError, match="'chunk_rows' must be an int >= 1 or None. Got 0"):
        io.read_preferences(blank, chunk_rows=0)
    with pytest.raises(ValueError, match="'format' must be one of"):
        io.read_preferences(blank, format="xlsx")
    with pytest.raises(TypeError, match="'records' must be an iterable of dicts"):
        io.from_records({"xa": 1})


def test_writer_errors(tmp_path):
    with pytest.raises(
        TypeError, match="'prefs' must be a pbde.Preferences or pbde.TextPreferences"
    ):
        io.write_preferences({"xa": 1}, tmp_path / "a.jsonl")
    cube = pbde.Preferences(torch.zeros(2, 2, 2), torch.zeros(2, 2, 2), torch.ones(2))
    with pytest.raises(ValueError, match=r"items of shape \(2, 2\)"):
        io.write_preferences(cube, tmp_path / "a.jsonl")
    padded = pbde.Preferences(
        torch.tensor([[1, -1], [-1, -1]]), torch.ones(2, 2).long(), torch.ones(2)
    )
    for fmt in FORMATS:
        with pytest.raises(ValueError, match="at least one token"):
            io.write_preferences(padded, tmp_path / f"p.{fmt}")


def test_missing_pyarrow_gives_a_clear_import_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match=r'pip install "pbde\[io\]"'):
        io.read_preferences(_touch(tmp_path / "x.parquet"))
    # JSON Lines needs no pyarrow: the row-by-row path takes over
    records = [json.dumps({"xa": i, "xb": 0, "y": 1}) for i in range(40)]
    assert len(io.read_preferences(write_lines(tmp_path / "x.jsonl", records)).prefs) == 40


def _touch(path):
    path.write_bytes(b"")
    return path


# -- Hypothesis: malformed input never gives another exception or a wrong label --------------

junk_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.lists(st.integers(-3, 10), max_size=3),
    st.lists(st.floats(-1e3, 1e3), max_size=3),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)
field_names = st.sampled_from(
    ["xa", "xb", "y", "label", "tie", "annotator_id", "weight", "chosen", "rejected", "prompt", "z"]
)


@st.composite
def records_strategy(draw):
    """Mostly valid records (scalar items) with random deletions, junk values and extra keys."""
    n = draw(st.integers(1, 30))
    records = []
    for _ in range(n):
        if draw(st.booleans()):
            record = {"xa": draw(st.integers(0, 9)), "xb": draw(st.integers(0, 9))}
            record["y"] = draw(st.floats(0, 1))
        else:
            record = {"chosen": draw(st.integers(0, 9)), "rejected": draw(st.integers(0, 9))}
        for _ in range(draw(st.integers(0, 2))):
            action = draw(st.sampled_from(["delete", "junk", "extra"]))
            key = draw(field_names)
            if action == "delete":
                record.pop(key, None)
            else:
                record[key] = draw(junk_values)
        records.append(record)
    return records


def oracle_label(record):
    """The label a valid record states, computed without pbde."""
    if record.get("tie") in (True, 1):
        return 0.5
    for key in ("y", "label"):
        if record.get(key) is not None:
            return float(record[key])
    return 1.0  # chosen/rejected


def oracle_items(record):
    if record.get("xa") is not None or record.get("xb") is not None:
        return record["xa"], record["xb"]
    return record["chosen"], record["rejected"]


def check_parse(result, records, first=0):
    prefs = result.prefs
    n = len(prefs)
    assert len(prefs.xa) == len(prefs.xb) == n == result.rows.shape[0]
    assert result.dropped == result.rows_read - n == len({p.row for p in result.problems})
    assert bool(((prefs.y >= 0) & (prefs.y <= 1)).all())
    for position, row in enumerate(result.rows.tolist()):
        record = records[row - first]
        assert prefs.y[position].item() == pytest.approx(oracle_label(record), abs=1e-6)
        xa, xb = oracle_items(record)
        if result.items == "text":  # junk strings as items: the text itself
            assert (prefs.xa[position], prefs.xb[position]) == (xa, xb)
            continue
        if result.items == "name":
            names = result.item_names
            assert (names[prefs.xa[position]], names[prefs.xb[position]]) == (xa, xb)
            continue
        assert prefs.xa[position].item() == pytest.approx(float(xa))
        assert prefs.xb[position].item() == pytest.approx(float(xb))


def assert_clear(error: ValueError):
    message = str(error)
    assert re.search(r"row \d+|holds no comparison|is empty|no item columns", message), message


@FAST
@given(records=records_strategy(), on_error=st.sampled_from(["raise", "drop"]))
def test_property_from_records(records, on_error):
    try:
        result = io.from_records(records, on_error=on_error)
    except ValueError as error:
        assert_clear(error)
        return
    check_parse(result, records)
    if on_error == "raise":
        assert result.dropped == 0


@FAST
@given(records=records_strategy(), chunk_rows=st.sampled_from([3, 1000]))
def test_property_jsonl_records(tmp_path, records, chunk_rows):
    path = tmp_path / "h.jsonl"
    lines = [json.dumps(r) for r in records]
    write_lines(path, lines)
    try:
        result = io.read_preferences(path, on_error="drop", chunk_rows=chunk_rows)
    except ValueError as error:
        assert_clear(error)
        return
    check_parse(result, [json.loads(line) for line in lines], first=1)


@FAST
@given(lines=st.lists(st.one_of(st.text(max_size=30), st.binary(max_size=30)), max_size=8))
def test_property_random_lines_jsonl_and_csv(tmp_path, lines):
    body = b"\n".join(line if isinstance(line, bytes) else line.encode() for line in lines)
    for name, header in (("r.jsonl", b""), ("r.csv", b"xa,xb,y\n")):
        path = tmp_path / name
        path.write_bytes(header + body)
        for on_error in ("raise", "drop"):
            try:
                result = io.read_preferences(path, on_error=on_error)
            except ValueError as error:
                assert_clear(error)
                continue
            y = result.prefs.y
            assert bool(((y >= 0) & (y <= 1)).all()) and y.shape[0] == result.rows.shape[0]


@FAST
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from(["1", "2.5", "", "x", "[1,2]", "[]", "nan", "-3", "1e400", "true"]),
            st.sampled_from(["0", "0.5", "1", "", "2", "-0.1", "nan", "inf", "abc", "True"]),
            st.sampled_from(["", "0", "7", "-1", "bob", "1.5"]),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_property_csv_cells(tmp_path, rows):
    path = tmp_path / "cells.csv"
    path.write_text("xa,xb,y,annotator_id\n" + "".join(f'"{a}",3,{y},{i}\n' for a, y, i in rows))
    try:
        result = io.read_preferences(path, on_error="drop")
    except ValueError as error:
        assert_clear(error)
        return
    for position, row in enumerate(result.rows.tolist()):
        expected = float(rows[row - 2][1])  # line numbers; only plain numbers in [0, 1] can survive
        assert math.isfinite(expected) and 0 <= expected <= 1
        assert result.prefs.y[position].item() == pytest.approx(expected)


@FAST
@given(records=records_strategy())
def test_property_parquet_and_dataframe(tmp_path, records):
    # keep only the columns pyarrow can type (a Parquet file cannot hold the others)
    names = sorted(set().union(*records))
    columns = {}
    for name in names:
        try:
            columns[name] = pa.array([r.get(name) for r in records])
        except (pa.ArrowException, OverflowError, TypeError, ValueError):
            continue
    if not columns:
        return
    table = pa.table(columns)
    path = tmp_path / "h.parquet"
    try:
        pq.write_table(table, path)
    except pa.ArrowException:  # e.g. an empty struct column: Parquet cannot hold it
        return
    frame = table.to_pandas()
    for read in (
        lambda: io.read_preferences(path, on_error="drop", chunk_rows=4),
        lambda: io.from_dataframe(frame, on_error="drop"),
    ):
        try:
            result = read()
        except ValueError as error:
            assert_clear(error)
            continue
        kept = table.to_pylist()
        assert bool(((result.prefs.y >= 0) & (result.prefs.y <= 1)).all())
        for position, row in enumerate(result.rows.tolist()):
            record = {k: v for k, v in kept[row].items() if v is not None}
            label = oracle_label(record)
            assert result.prefs.y[position].item() == pytest.approx(label, abs=1e-6)


def test_fast_and_row_by_row_paths_agree():
    generator = np.random.default_rng(0)
    records = [
        {"xa": float(a), "xb": float(b), "y": float(y), "annotator_id": int(i)}
        for a, b, y, i in zip(
            generator.normal(size=40),
            generator.normal(size=40),
            generator.uniform(size=40),
            generator.integers(0, 5, 40),
            strict=True,
        )
    ]
    records[5]["y"] = 1.5
    records[30]["xa"] = float("inf")
    fast = io.from_records(records, on_error="drop")  # 40 rows: one vectorized chunk
    slow = io.from_records(records, on_error="drop", chunk_rows=8)  # < 16: row by row
    assert fast.problems == slow.problems and fast.rows.tolist() == slow.rows.tolist()
    for name in ("xa", "xb", "y", "annotator_id"):
        assert torch.equal(getattr(fast.prefs, name), getattr(slow.prefs, name))
    assert fast.prefs.xa.tolist() == pytest.approx(
        [r["xa"] for i, r in enumerate(records) if i not in (5, 30)]
    )


def test_parquet_extra_columns_and_row_groups(tmp_path):
    path = tmp_path / "extra.parquet"
    table = pa.table(
        {
            "chosen": pa.array([[1, 2], [3], [4, 5, 6]]),
            "rejected": pa.array([[7], [], [8]]),
            "text": ["a", "b", "c"],
            "weight": [1.0, 2.0, None],
        }
    )
    pq.write_table(table, path, row_group_size=2)
    out = io.read_preferences(path, on_error="drop", chunk_rows=1)
    assert out.ignored_columns == ["text"]
    assert [(p.row, p.column) for p in out.problems] == [(1, "rejected"), (2, "weight")]
    assert "empty sequence" in out.problems[0].message
    assert out.prefs.xa.tolist() == [[1, 2]] and out.prefs.xb.tolist() == [[7, -1]]
    assert out.weights.tolist() == [1.0] and out.rows.tolist() == [0]


def test_float64_overflow_of_float32_items_is_a_problem():
    out = io.from_records(
        [{"xa": 1e39, "xb": 0.0, "y": 1}, {"xa": 1.0, "xb": 0.0, "y": 0}], on_error="drop"
    )
    assert [(p.row, p.column) for p in out.problems] == [(0, "xa")]
    assert "overflows torch.float32" in out.problems[0].message


def test_float_parquet_column_read_as_ids(tmp_path):
    values = [1.0, 2.0, float("inf"), 1e300, 2.5, float("nan")] + [3.0] * 20
    path = tmp_path / "ids.parquet"
    pq.write_table(pa.table({"xa": values, "xb": [0.0] * 26, "y": [1.0] * 26}), path)
    out = io.read_preferences(path, items="id", on_error="drop")
    assert out.prefs.xa.dtype == torch.int64
    assert out.prefs.xa.tolist() == [1, 2] + [3] * 20
    assert [p.row for p in out.problems] == [2, 3, 4, 5]
    assert "must fit in int64" in out.problems[1].message
    assert len(out.problems[1].message) < 100


@pytest.mark.parametrize(
    "name, text", [("b.csv", "xa,xb,y\n1,2,1\n"), ("b.jsonl", '{"xa": 1, "xb": 2, "y": 1}\n')]
)
def test_utf8_byte_order_mark_is_skipped(tmp_path, name, text):
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert io.read_preferences(path).prefs.xb.tolist() == [2]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_weights_round_trip_into_preferences(tmp_path, fmt):
    weight = torch.tensor([0.5, 2.0, 0.0])
    prefs = pbde.Preferences(
        torch.tensor([0, 1, 2]), torch.tensor([2, 0, 1]), torch.ones(3), weight=weight
    )
    path = tmp_path / f"w.{fmt}"
    pbde.io.write_preferences(prefs, path)
    read = pbde.io.read_preferences(path)
    assert torch.equal(read.prefs.weight, weight)
    assert torch.equal(read.weights, weight)


# -- text items: TextPreferences, before tokenization ----------------------------------------

TEXT_RECORDS = [
    {"prompt": "2+2=", "xa": "4", "xb": "5", "y": 1.0, "annotator_id": 3, "weight": 0.5},
    {"prompt": "Capital of France?", "xa": "Lyon", "xb": "Paris, of course.", "y": 0.0,
     "annotator_id": 0, "weight": 2.0},
    {"prompt": "", "xa": "a, \"quoted\"\nline", "xb": "é ü 中", "y": 0.5, "annotator_id": 1,
     "weight": 1.0},
]  # fmt: skip
CHAT = [
    {
        "chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
        "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go."}],
    },
    {
        "chosen": [{"role": "user", "content": "2+2"}, {"role": "assistant", "content": "4"}],
        "rejected": [{"role": "user", "content": "2+2"}, {"role": "assistant", "content": "22"}],
    },
]


def assert_same_text(got, expected_records, prompt=True):
    assert isinstance(got, pbde.TextPreferences)
    first, second = ("xa", "xb") if "xa" in expected_records[0] else ("chosen", "rejected")
    assert got.xa == [r[first] for r in expected_records]
    assert got.xb == [r[second] for r in expected_records]
    assert got.prompt == ([r["prompt"] for r in expected_records] if prompt else None)
    assert got.y.tolist() == [r.get("y", 1.0) for r in expected_records]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "csv"])
def test_text_round_trip(tmp_path, fmt):
    records = [dict(r) for r in TEXT_RECORDS]
    if fmt == "csv":
        records[2]["prompt"] = "?"  # an empty CSV cell is a missing value, not ""
    data = pbde.TextPreferences(
        [r["prompt"] for r in records],
        [r["xa"] for r in records],
        [r["xb"] for r in records],
        torch.tensor([r["y"] for r in records]),
        torch.tensor([r["annotator_id"] for r in records]),
        torch.tensor([r["weight"] for r in records]),
    )
    path = tmp_path / f"text.{fmt}"
    io.write_preferences(data, path)
    result = io.read_preferences(path)
    assert result.items == "text" and result.dropped == 0
    assert_same_text(result.prefs, records)
    assert result.prefs.annotator_id.tolist() == [3, 0, 1]
    assert result.prefs.weight.tolist() == [0.5, 2.0, 1.0]
    assert result.prompts == [r["prompt"] for r in records]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_conversational_round_trip(tmp_path, fmt):
    data = pbde.TextPreferences(None, [r["chosen"] for r in CHAT], [r["rejected"] for r in CHAT])
    path = tmp_path / f"chat.{fmt}"
    io.write_preferences(data, path)
    result = io.read_preferences(path)
    assert result.items == "text" and result.prefs.conversational
    assert_same_text(result.prefs, CHAT, prompt=False)


def test_conversational_data_and_csv(tmp_path):
    data = pbde.TextPreferences(None, [r["chosen"] for r in CHAT], [r["rejected"] for r in CHAT])
    with pytest.raises(ValueError, match="cannot be read from CSV cells.*JSON Lines or Parquet"):
        io.write_preferences(data, tmp_path / "chat.csv")
    path = tmp_path / "chat.csv"
    pd.DataFrame({k: [json.dumps(r[k]) for r in CHAT] for k in ("chosen", "rejected")}).to_csv(
        path, index=False
    )
    with pytest.raises(ValueError, match=r"column 'chosen': chat message lists cannot be read"):
        io.read_preferences(path)


def test_text_from_records_dataframe_and_arrow_agree():
    expected = [dict(r) for r in TEXT_RECORDS]
    for result in (
        io.from_records(TEXT_RECORDS),
        io.from_dataframe(pd.DataFrame(TEXT_RECORDS)),
        io.from_records(CHAT),
    ):
        assert result.items == "text"
    assert_same_text(io.from_records(TEXT_RECORDS).prefs, expected)
    assert_same_text(io.from_dataframe(pd.DataFrame(TEXT_RECORDS)).prefs, expected)
    assert_same_text(io.from_records(CHAT).prefs, CHAT, prompt=False)


def test_text_problems_are_reported_row_by_row(tmp_path):
    chat = [{"role": "user", "content": "hi"}]
    lines = [
        {"prompt": "p0", "chosen": "good", "rejected": "bad"},  # 0 ok, fixes "standard"
        {"prompt": "p1", "chosen": "", "rejected": "bad"},  # 1 empty completion
        {"chosen": "good", "rejected": "bad"},  # 2 no prompt (others have one)
        {"prompt": "p3", "chosen": 7, "rejected": "bad"},  # 3 a number among text
        {"prompt": "p4", "chosen": chat, "rejected": "bad"},  # 4 mixed formats
        {"prompt": "p5", "chosen": [{"role": "user"}], "rejected": "x"},  # 5 bad message
        {"prompt": "p6", "chosen": "fine", "rejected": "also fine"},  # 6 ok
    ]
    path = write_lines(tmp_path / "t.jsonl", [json.dumps(r) for r in lines])
    with pytest.raises(ValueError) as info:
        io.read_preferences(path)
    message = str(info.value)
    assert "5 problem(s)" in message
    out = io.read_preferences(path, on_error="drop")
    assert [(p.row, p.column) for p in out.problems] == [
        (2, "chosen"),
        (3, "prompt"),
        (4, "chosen"),
        (5, "chosen"),
        (6, "chosen"),
    ]
    texts = [p.message for p in out.problems]
    assert "empty 'chosen'" in texts[0]
    assert "missing 'prompt' (other rows have one)" in texts[1]
    assert "items are text (fixed by row 1), got 7" in texts[2]
    assert "mixed text formats" in texts[3]
    assert "string 'role' and 'content'" in texts[4]
    assert out.dropped == 5 and out.rows.tolist() == [1, 7]
    assert out.prefs.xa == ["good", "fine"] and out.prefs.prompt == ["p0", "p6"]


def test_items_text_forces_text_and_names_map_to_ids(tmp_path):
    records = [
        {"xa": "Boston", "xb": "Ohio State", "y": 1},
        {"xa": "Ohio State", "xb": "Yale", "y": 0},
        {"xa": "Yale", "xb": "Boston", "y": 0.5},
    ]
    names = io.from_records(records)
    assert names.items == "name" and names.item_names == ["Boston", "Ohio State", "Yale"]
    assert names.prefs.xa.tolist() == [0, 1, 2] and names.prefs.xb.tolist() == [1, 2, 0]
    assert names.prefs.xa.dtype == torch.int64
    text = io.from_records(records, items="text")
    assert text.items == "text" and text.prefs.xa == ["Boston", "Ohio State", "Yale"]
    path = tmp_path / "names.csv"
    pd.DataFrame(records).to_csv(path, index=False)
    from_csv = io.read_preferences(path)
    assert from_csv.items == "name" and from_csv.item_names == names.item_names
    assert torch.equal(from_csv.prefs.xb, names.prefs.xb)
    with pytest.raises(ValueError, match=r"row 0, column 'xa': items are names \(strings\)"):
        io.from_records([{"xa": 3, "xb": "x", "y": 1}], items="name")


# -- every reader gives the same comparisons for the same data --------------------------------


def read_every_way(tmp_path, records, **options):
    """The same records through every reader; rows are positions, lines, or lines after a header."""
    table = pa.Table.from_pylist(records)
    write_lines(tmp_path / "s.jsonl", [json.dumps(r) for r in records])
    pq.write_table(table, tmp_path / "s.parquet", row_group_size=3)
    out = {
        "records": io.from_records(records, **options),
        "arrow": io.from_arrow(table, **options),
        "batch": io.from_arrow(table.to_batches()[0], **options),
        "dataframe": io.from_dataframe(table.to_pandas(), **options),
        "jsonl": io.read_preferences(tmp_path / "s.jsonl", **options),
        "parquet": io.read_preferences(tmp_path / "s.parquet", chunk_rows=2, **options),
    }
    if not any(isinstance(v, list) and v and isinstance(v[0], dict) for v in records[0].values()):
        pd.DataFrame(records).to_csv(tmp_path / "s.csv", index=False)
        out["csv"] = io.read_preferences(tmp_path / "s.csv", **options)
    return out


def assert_same(results):
    reference = results["records"]
    for name, result in results.items():
        assert result.items == reference.items, name
        got, expected = result.prefs, reference.prefs
        for field in ("xa", "xb", "prompt"):
            a, b = getattr(got, field, None), getattr(expected, field, None)
            assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b, (name, field)
        for field in ("y", "annotator_id", "weight"):
            a, b = getattr(got, field), getattr(expected, field)
            assert (a is None and b is None) or torch.equal(a, b), (name, field)
        assert result.item_names == reference.item_names, name


@FAST
@given(
    n=st.integers(1, 12),
    kind=st.sampled_from(["id", "number", "text"]),
    data=st.data(),
)
def test_property_every_reader_agrees(tmp_path, n, kind, data):
    if kind == "id":
        item = st.integers(0, 50)
    elif kind == "number":
        item = st.floats(-1e6, 1e6, width=32).filter(lambda v: not float(v).is_integer())
    else:
        item = st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=1)
        item = item.filter(lambda t: t.strip() and not t.lstrip().startswith("[")).map(
            lambda t: "t " + t  # never a number in CSV
        )
    records = [
        {
            "xa": data.draw(item),
            "xb": data.draw(item),
            "y": data.draw(st.sampled_from([0.0, 0.25, 1.0])),
            "annotator_id": data.draw(st.integers(0, 3)),
            "weight": data.draw(st.sampled_from([0.5, 1.0, 2.0])),
        }
        for _ in range(n)
    ]
    options = {"items": kind}
    results = read_every_way(tmp_path, records, **options)
    assert_same(results)
    expected_y = torch.tensor([r["y"] for r in records])
    assert torch.equal(results["jsonl"].prefs.y, expected_y)
    assert results["jsonl"].rows.tolist() == list(range(1, n + 1))
    assert results["arrow"].rows.tolist() == list(range(n))
    if kind == "text":
        assert results["csv"].prefs.xa == [r["xa"] for r in records]


def test_from_arrow_and_dataframe_inputs(tmp_path):
    table = pa.table({"xa": [1, 2, 3], "xb": [0, 0, 1], "y": [1.0, 0.0, 0.5], "note": list("abc")})
    result = io.from_arrow(table)
    assert result.prefs.xa.tolist() == [1, 2, 3] and result.ignored_columns == ["note"]
    assert result.prefs.y.tolist() == [1.0, 0.0, 0.5]
    with pytest.raises(TypeError, match="'table' must be a pyarrow.Table"):
        io.from_arrow({"xa": [1]})
    with pytest.raises(ValueError, match="no item columns"):
        io.from_arrow(pa.table({"a": [1]}))
    datasets = pytest.importorskip("datasets")
    dataset = datasets.Dataset.from_dict({"xa": [1, 2, 3], "xb": [0, 0, 1], "y": [1, 0, 1]})
    shuffled = dataset.select([2, 0])  # an indices mapping: the view, not the table, is read
    assert io.from_arrow(shuffled).prefs.xa.tolist() == [3, 1]


# -- columns: misspellings, unknown and duplicate columns, missing optional values -----------


def every_reader(tmp_path, records):
    """``{reader: (read(**options), offset)}`` for the same records; ``row - offset`` is the
    0-based position of a row (JSON Lines rows are lines, CSV rows lines after the header)."""
    table = pa.Table.from_pylist(records)
    write_lines(tmp_path / "r.jsonl", [json.dumps(r) for r in records])
    pq.write_table(table, tmp_path / "r.parquet", row_group_size=2)
    pd.DataFrame(records).to_csv(tmp_path / "r.csv", index=False)
    return {
        "records": (lambda **o: io.from_records(records, **o), 0),
        "arrow": (lambda **o: io.from_arrow(table, **o), 0),
        "dataframe": (lambda **o: io.from_dataframe(table.to_pandas(), **o), 0),
        "jsonl": (lambda **o: io.read_preferences(tmp_path / "r.jsonl", **o), 1),
        "csv": (lambda **o: io.read_preferences(tmp_path / "r.csv", **o), 2),
        "parquet": (lambda **o: io.read_preferences(tmp_path / "r.parquet", chunk_rows=2, **o), 0),
    }


@pytest.mark.parametrize(
    ("typo", "known"), [("yy", "y"), ("wieght", "weight"), ("Annotator ID", "annotator_id")]
)
def test_a_misspelled_column_is_an_error_naming_both_in_every_format(tmp_path, typo, known):
    records = [{"xa": k, "xb": k + 1, "y": 1.0, "weight": 1.0, "annotator_id": 0} for k in range(4)]
    records = [{typo if c == known else c: v for c, v in r.items()} for r in records]
    for name, (read, _) in every_reader(tmp_path, records).items():
        with pytest.raises(ValueError) as info:
            read()
        message = str(info.value)
        assert f"column '{typo}' is not known: did you mean '{known}'?" in message, name
        assert "missing field" not in message, name
        with pytest.raises(ValueError, match="is not known"):
            read(on_error="drop")
    renamed = io.read_preferences(tmp_path / "r.csv", columns={typo: known})
    assert renamed.prefs.xa.tolist() == [0, 1, 2, 3] and renamed.ignored_columns == []


def test_unrelated_unknown_columns_are_listed_and_can_be_silenced(tmp_path):
    records = [{"xa": k, "xb": 1, "y": 1.0, "time": 3, "note": "n"} for k in range(3)]
    for name, (read, _) in every_reader(tmp_path, records).items():
        assert read().ignored_columns == ["note", "time"], name
    path = write_lines(tmp_path / "t.jsonl", ['{"xa": 1, "xb": 2, "y": 1, "tiee": 0}'])
    with pytest.raises(ValueError, match="column 'tiee' is not known: did you mean 'tie'"):
        io.read_preferences(path)
    out = io.read_preferences(path, columns={"tiee": None})
    assert out.ignored_columns == ["tiee"] and out.prefs.y.tolist() == [1.0]
    with pytest.raises(ValueError, match=r"maps the known columns \['weight'\] to None"):
        io.read_preferences(path, columns={"weight": None})


def test_duplicate_columns_are_an_error_in_every_format(tmp_path):
    table = pa.table([[1, 2], [0, 1], [1.0, 0.0], [3, 4]], names=["xa", "xb", "y", "xa"])
    pq.write_table(table, tmp_path / "d.parquet")
    (tmp_path / "d.csv").write_text("xa,xb,y,xa\n1,0,1,3\n2,1,0,4\n")
    for read in (
        lambda: io.read_preferences(tmp_path / "d.parquet"),
        lambda: io.read_preferences(tmp_path / "d.csv"),
        lambda: io.from_arrow(table),
        lambda: io.from_dataframe(table.to_pandas()),
    ):
        with pytest.raises(ValueError, match=r"duplicate columns \['xa'\]"):
            read()
    # a renaming that makes two columns one is a duplicate too, in every format
    records = [{"a": 1, "xa": 2, "xb": 0, "y": 1.0}, {"a": 1, "xa": 2, "xb": 0, "y": 0.0}]
    for name, (read, _) in every_reader(tmp_path, records).items():
        if name in ("jsonl", "csv", "parquet"):
            with pytest.raises(ValueError, match=r"duplicate columns \['xa'\] after renaming"):
                read(columns={"a": "xa"})
    path = write_lines(tmp_path / "k.jsonl", ['{"xa": 1, "xb": 2, "xa": 3, "y": 1}'])
    with pytest.raises(ValueError, match="row 1: key 'xa' appears twice"):
        io.read_preferences(path)


@pytest.mark.parametrize("column", ["weight", "annotator_id"])
def test_a_missing_optional_value_is_a_row_problem_unless_allowed(tmp_path, column):
    records = [{"xa": k, "xb": k + 1, "y": 1.0, "weight": 2.0, "annotator_id": 1} for k in range(5)]
    records[1][column] = None  # null in JSON, Arrow and Parquet; NaN in pandas; empty in CSV
    records[3][column] = float("nan") if column == "weight" else None
    for name, (read, offset) in every_reader(tmp_path, records).items():
        with pytest.raises(ValueError, match=f"column '{column}': missing '{column}'"):
            read()
        out = read(on_error="drop")
        assert [(p.row - offset, p.column) for p in out.problems] == [(1, column), (3, column)]
        assert (out.rows - offset).tolist() == [0, 2, 4] and out.dropped == 2, name
        # allow_missing: the old rule (a value missing where other rows have one is a problem)
        assert read(on_error="drop", allow_missing=True).dropped == 2, name
    # a column without any value: every row is a problem, or, with allow_missing, absent
    for record in records:
        record[column] = None
    for name, (read, _) in every_reader(tmp_path, records).items():
        out = read(on_error="drop", allow_missing=True)
        assert getattr(out.prefs, column) is None and out.dropped == 0, name
        with pytest.raises(ValueError, match="has invalid rows: 5 problem"):
            read()
    with pytest.raises(TypeError, match="'allow_missing' must be a bool"):
        io.from_records(records, allow_missing=1)


# -- aggregated data: win/loss/tie counts per pair ---------------------------------------------

COUNTS = [
    {"xa": "Ann", "xb": "Bob", "wins_a": 3, "wins_b": 1, "ties": 2},
    {"xa": "Bob", "xb": "Cid", "wins_a": 0, "wins_b": 2, "ties": 0},
    {"xa": "Cid", "xb": "Ann", "wins_a": 0, "wins_b": 0, "ties": 0},  # no comparison
    {"xa": "Ann", "xb": "Cid", "wins_a": 1, "wins_b": 0, "ties": 1},
]


def expanded(records):
    """The comparisons the counts stand for, one row per comparison, weight 1."""
    out = []
    for r in records:
        for count, y in (("wins_a", 1.0), ("wins_b", 0.0), ("ties", 0.5)):
            out += [{"xa": r["xa"], "xb": r["xb"], "y": y}] * int(r.get(count, 0))
    return out


def test_counts_become_weighted_comparisons_in_every_format(tmp_path):
    for name, (read, offset) in every_reader(tmp_path, COUNTS).items():
        out = read()
        assert out.items == "name" and out.item_names == ["Ann", "Bob", "Cid"], name
        assert out.prefs.xa.tolist() == [0, 0, 0, 1, 0, 0], name
        assert out.prefs.xb.tolist() == [1, 1, 1, 2, 2, 2], name
        assert out.prefs.y.tolist() == [1.0, 0.0, 0.5, 0.0, 1.0, 0.5], name
        assert out.prefs.weight.tolist() == [3.0, 1.0, 2.0, 2.0, 1.0, 1.0], name
        assert (out.rows - offset).tolist() == [0, 0, 0, 1, 3, 3], name
        assert out.rows_read == 4 and out.dropped == 0 and out.ignored_columns == [], name
    ids = io.from_records([{"xa": 4, "xb": 7, "wins_a": 2.0, "wins_b": 5}])  # integral floats
    assert ids.items == "id" and ids.prefs.xa.tolist() == [4, 4] and ids.prefs.y.tolist() == [1, 0]
    assert ids.prefs.weight.tolist() == [2.0, 5.0]


def test_bad_counts_are_row_problems_in_every_format(tmp_path):
    records = [dict(r) for r in COUNTS]
    records[0]["wins_a"] = -1
    records[1]["wins_b"] = 1.5
    records[3]["ties"] = None
    records[2]["ties"] = 1
    for name, (read, offset) in every_reader(tmp_path, records).items():
        with pytest.raises(ValueError, match="'wins_a' must be a count >= 0, got -1"):
            read()
        out = read(on_error="drop")
        found = [(p.row - offset, p.column) for p in out.problems]
        assert found == [(0, "wins_a"), (1, "wins_b"), (3, "ties")], (name, out.problems)
        assert "non-integer 1.5" in out.problems[1].message
        assert out.dropped == 3 and (out.rows - offset).tolist() == [2], name
    records[0]["wins_a"], records[1]["wins_b"] = 3, 2
    for name, (read, offset) in every_reader(tmp_path, records).items():
        out = read(allow_missing=True)  # a missing ties is 0 ties
        assert (out.rows - offset).tolist() == [0, 0, 0, 1, 2, 3], name
    with pytest.raises(ValueError, match=r"every count .* of the 1 valid row\(s\) is 0"):
        io.from_records([{"xa": 1, "xb": 2, "wins_a": 0, "wins_b": 0}])
    mixed = [{"xa": 1, "xb": 2, "wins_a": 1, "wins_b": 0}, {"xa": 1, "xb": 2, "y": 1.0}]
    out = io.from_records(mixed, on_error="drop")
    assert [(p.row, p.column) for p in out.problems] == [(1, "wins_a")]
    with pytest.raises(ValueError, match="cannot also have 'y'"):
        io.from_records([{"xa": 1, "xb": 2, "wins_a": 1, "wins_b": 0, "y": 1.0}])


def test_fitting_counts_equals_fitting_the_expanded_rows():
    size = 3
    aggregated = io.from_records(COUNTS)
    rows = io.from_records(expanded(COUNTS))
    assert rows.item_names == aggregated.item_names and len(rows.prefs) == 10
    fitted = []
    for prefs in (aggregated.prefs, rows.prefs):
        model = pbde.Annotator(pbde.densities.Categorical(size=size))
        pbde.fit(model, prefs, steps=200, lr=0.05, progress=False)
        fitted.append(model.density.log_prob(torch.arange(size)).detach())
    torch.testing.assert_close(fitted[0], fitted[1], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(fitted[0], torch.full((size,), -math.log(size)), atol=1e-2)


@FAST
@given(
    n=st.integers(1, 10),
    kind=st.sampled_from(["id", "number", "tokens", "vector"]),
    data=st.data(),
)
def test_property_bad_rows_are_the_same_in_every_format(tmp_path, n, kind, data):
    """Every reader reports the same bad rows and keeps the same comparisons."""
    item = {
        "id": st.integers(0, 50),
        "number": st.floats(-1e3, 1e3).filter(lambda v: not float(v).is_integer()),
        "tokens": st.lists(st.integers(0, 99), min_size=1, max_size=4),
        "vector": st.lists(st.floats(-10, 10).map(lambda v: v + 0.5), min_size=3, max_size=3),
    }[kind]
    bad_values = {  # one bad field per bad row, each a row problem in every format
        "y": st.sampled_from([1.5, -0.25]),
        "annotator_id": st.just(-1),
        "weight": st.sampled_from([-2.0, None]),
    }
    records, bad_rows = [], []
    for row in range(n):
        record = {
            "xa": data.draw(item),
            "xb": data.draw(item),
            "y": data.draw(st.sampled_from([0.0, 0.5, 1.0])),
            "annotator_id": data.draw(st.integers(0, 3)),
            "weight": data.draw(st.sampled_from([0.5, 2.0])),
        }
        if row > 0 and data.draw(st.booleans()):  # row 0 stays good: something is kept
            column = data.draw(st.sampled_from(sorted(bad_values)))
            record[column] = data.draw(bad_values[column])
            bad_rows.append(row)
        records.append(record)
    results = {}
    for name, (read, offset) in every_reader(tmp_path, records).items():
        out = read(items=kind, on_error="drop")
        assert sorted({p.row - offset for p in out.problems}) == bad_rows, (name, out.problems)
        assert (out.rows - offset).tolist() == [r for r in range(n) if r not in bad_rows], name
        results[name] = out
    assert_same(results)


def test_columns_rename_in_memory_sources_as_in_files(tmp_path):
    # the same rows under other names, read from records, pandas, Arrow and a file: one result
    pd = pytest.importorskip("pandas")
    pa = pytest.importorskip("pyarrow")
    rows = [
        {"question": "Q1", "response_j": "good", "response_k": "bad", "score": 0.9, "notes": "-"},
        {"question": "Q2", "response_j": "fine", "response_k": "poor", "score": 0.7, "notes": "-"},
    ]
    columns = {"question": "prompt", "response_j": "chosen", "response_k": "rejected",
               "score": "weight", "notes": None}  # fmt: skip
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = [
        io.read_preferences(path, columns=columns),
        io.from_records(rows, columns=columns),
        io.from_dataframe(pd.DataFrame(rows), columns=columns),
        io.from_arrow(pa.Table.from_pylist(rows), columns=columns),
    ]
    for out in results:
        prefs = out.prefs
        assert prefs.prompt == ["Q1", "Q2"] and prefs.xa == ["good", "fine"], prefs
        assert prefs.xb == ["bad", "poor"] and prefs.weight.tolist() == pytest.approx([0.9, 0.7])
        assert out.ignored_columns == ["notes"]
    # two names swapped: no double renaming
    swapped = [{"xa": 0, "xb": 1, "y": 1.0}]
    for read in (io.from_records, lambda r, **k: io.from_dataframe(pd.DataFrame(r), **k),
                 lambda r, **k: io.from_arrow(pa.Table.from_pylist(r), **k)):  # fmt: skip
        prefs = read(swapped, columns={"xa": "xb", "xb": "xa"}).prefs
        assert prefs.xa.tolist() == [1] and prefs.xb.tolist() == [0]
        with pytest.raises(ValueError, match=r"duplicate columns \['xb'\].*'xa' -> 'xb'"):
            read(swapped, columns={"xa": "xb"})
        with pytest.raises(ValueError, match=r"unknown names \['x_a'\]"):
            read(swapped, columns={"xa": "x_a"})
