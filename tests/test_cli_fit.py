"""`pbde fit` and `pbde evaluate`: outputs, held-out numbers checked independently, user errors.

The data: 3000 pairs of 5 items drawn uniformly, labelled by a Luce annotator with p* = P_STAR,
written with pbde.io.write_preferences. Held-out numbers are recomputed here in numpy from the
saved model's logits and the rows of test.jsonl read with the json module.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import pbde
from pbde.cli import main
from pbde.densities import Categorical

P_STAR = torch.tensor([0.1, 0.2, 0.3, 0.15, 0.25])
N_PAIRS = 3000


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    generator = torch.Generator().manual_seed(0)
    xa, xb = pbde.sample_pairs(Categorical(size=5), N_PAIRS, generator=generator)
    prefs = pbde.Annotator(Categorical(probs=P_STAR)).label(xa, xb, generator=generator)
    pbde.io.write_preferences(prefs, folder / "prefs.jsonl")
    pbde.io.write_preferences(prefs, folder / "prefs.csv")
    x = torch.rand(2, 400, generator=generator) * 4 - 2
    numbers = pbde.Preferences(x[0], x[1], (x[0] > x[1]).float())
    pbde.io.write_preferences(numbers, folder / "numbers.jsonl")
    return folder


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def fit_args(data_file, out, *extra):
    return ["fit", data_file, "--density", "categorical", "--items", 5, "--steps", 150,
            "--lr", 0.1, "--out", out, "--no-progress", *extra]  # fmt: skip


def numpy_heldout(model_file, test_file):
    """Mean log-likelihood and accuracy of a Luce Categorical model, in numpy."""
    logits = torch.load(model_file, weights_only=True)["state"]["density.logits"].double().numpy()
    log_p = logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
    rows = [json.loads(line) for line in test_file.read_text().splitlines() if line.strip()]
    xa = np.array([r["xa"] for r in rows])
    xb = np.array([r["xb"] for r in rows])
    y = np.array([r["y"] for r in rows], dtype=np.float64)
    w = np.array([r.get("weight", 1.0) for r in rows], dtype=np.float64)
    h = log_p[xa] - log_p[xb]
    log_likelihood = -(y * np.logaddexp(0, -h) + (1 - y) * np.logaddexp(0, h))
    right = y * (h > 0) + (1 - y) * (h < 0) + 0.5 * (h == 0)
    return (w * log_likelihood).sum() / w.sum(), (w * right).sum() / w.sum(), len(rows)


def test_fit_writes_the_model_the_report_and_the_test_split(data, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run(fit_args(data / "prefs.jsonl", out), capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    for key in ("final_loss", "heldout_log_likelihood", "heldout_accuracy", "train_size",
                "test_size", "seconds", "settings"):  # fmt: skip
        assert key in report
    assert (report["train_size"], report["test_size"]) == (2400, 600)  # 20% held out
    assert report["settings"]["behavior"] == "luce" and report["settings"]["steps"] == 150
    assert report["seconds"] > 0 and math.isfinite(report["final_loss"])
    log_likelihood, accuracy, rows = numpy_heldout(out / "model.pt", out / "test.jsonl")
    assert rows == 600
    assert report["heldout_log_likelihood"] == pytest.approx(log_likelihood, abs=1e-6)
    assert report["heldout_accuracy"] == pytest.approx(accuracy, abs=1e-12)
    # better than the uniform model, whose log-likelihood is log(1/2) on every comparison.
    # The truth's expected log-likelihood per comparison (minus the mean Bernoulli entropy over
    # uniform pairs, numpy) is -0.6586, 0.035 above log(1/2); the standard error of a mean over
    # 600 held-out comparisons is ~0.006, so a margin of 0.02 leaves ~2.5 standard errors.
    assert report["heldout_log_likelihood"] > math.log(0.5) + 0.02
    assert "held-out log-likelihood" in stdout


def test_evaluate_reproduces_the_held_out_numbers(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(fit_args(data / "prefs.csv", out, "--seed", 3), capsys)[0] == 0
    report = json.loads((out / "report.json").read_text())
    code, stdout, err = run(["evaluate", out / "model.pt", out / "test.jsonl", "--json"], capsys)
    assert code == 0, err
    metrics = json.loads(stdout)
    assert metrics["comparisons"] == report["test_size"]
    assert metrics["log_likelihood"] == pytest.approx(report["heldout_log_likelihood"], abs=1e-12)
    assert metrics["accuracy"] == pytest.approx(report["heldout_accuracy"], abs=1e-12)
    # and the human-readable form prints the same numbers
    code, stdout, _ = run(["evaluate", out / "model.pt", out / "test.jsonl"], capsys)
    assert code == 0 and f"{report['heldout_log_likelihood']:.6f}" in stdout


def test_the_split_depends_on_the_seed_and_covers_the_data(data, tmp_path, capsys):
    tests = []
    for seed in (0, 1):
        out = tmp_path / f"seed{seed}"
        assert (
            run(fit_args(data / "prefs.jsonl", out, "--seed", seed, "--steps", 1), capsys)[0] == 0
        )
        tests.append((out / "test.jsonl").read_text())
    assert tests[0] != tests[1]
    all_rows = sorted((data / "prefs.jsonl").read_text().splitlines())
    held_out = tests[0].splitlines()
    assert len(held_out) == 600 and set(held_out) <= set(all_rows)


def test_dpo_with_a_reference_model_file(data, tmp_path, capsys):
    reference = pbde.Annotator(Categorical(probs=torch.tensor([0.3, 0.25, 0.2, 0.15, 0.1])))
    pbde.save_model(reference, tmp_path / "ref.pt")
    out = tmp_path / "run"
    extra = ["--behavior", "dpo", "--beta", 2.0, "--reference", tmp_path / "ref.pt",
             "--loss", "hinge", "--delta", 0.5, "--batch-size", 256]  # fmt: skip
    code, _, err = run(fit_args(data / "prefs.jsonl", out, *extra), capsys)
    assert code == 0, err
    model = pbde.load_model(out / "model.pt")
    assert model.behavior.constant_f == 2.0
    with torch.no_grad():
        saved_reference = model.references[0].prob(torch.arange(5))
    assert torch.allclose(saved_reference, torch.tensor([0.3, 0.25, 0.2, 0.15, 0.1]), atol=1e-7)
    report = json.loads((out / "report.json").read_text())
    assert report["reference"] == str(tmp_path / "ref.pt")


def test_ipo_defaults_to_the_initial_model_as_reference(data, tmp_path, capsys):
    out = tmp_path / "run"
    extra = ["--behavior", "ipo", "--loss", "ipo", "--tau", 0.5, "--test-fraction", 0.0]
    code, _, err = run(fit_args(data / "prefs.jsonl", out, *extra), capsys)
    assert code == 0, err
    model = pbde.load_model(out / "model.pt")
    with torch.no_grad():
        reference = model.references[0].prob(torch.arange(5))
    assert torch.allclose(reference, torch.full((5,), 0.2))  # the uniform start
    report = json.loads((out / "report.json").read_text())
    assert report["reference"] == "initial model"
    assert report["test_size"] == 0 and report["heldout_log_likelihood"] is None
    assert not (out / "test.jsonl").exists()


def test_energy_density(data, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["fit", data / "numbers.jsonl", "--density", "energy", "--low", -2, "--high", 2,
            "--grid-size", 65, "--steps", 5, "--lr", 0.01, "--out", out, "--no-progress"]  # fmt: skip
    code, _, err = run(argv, capsys)
    assert code == 0, err
    model = pbde.load_model(out / "model.pt")
    assert isinstance(model.density, pbde.densities.EnergyModel) and model.density.grid.size == 65
    code, stdout, _ = run(["evaluate", out / "model.pt", data / "numbers.jsonl", "--json"], capsys)
    assert code == 0 and json.loads(stdout)["comparisons"] == 400


def test_checkpoint_resumes(data, tmp_path, capsys):
    checkpoint = tmp_path / "fit.ckpt"
    reports = []
    for name in ("a", "b"):
        out = tmp_path / name
        args = fit_args(data / "prefs.jsonl", out, "--steps", 20, "--checkpoint", checkpoint)
        assert run(args, capsys)[0] == 0
        reports.append(json.loads((out / "report.json").read_text()))
    assert torch.load(checkpoint, weights_only=True)["step"] == 20
    # the second run found the finished checkpoint: same model, no new steps
    assert reports[1]["final_loss"] == reports[0]["final_loss"]
    assert (tmp_path / "a" / "model.pt").read_bytes() != b""
    first = torch.load(tmp_path / "a" / "model.pt", weights_only=True)["state"]
    second = torch.load(tmp_path / "b" / "model.pt", weights_only=True)["state"]
    assert torch.equal(first["density.logits"], second["density.logits"])


USER_ERRORS = [
    (["--behavior", "dpo"], "--beta"),
    (["--behavior", "geometric"], "--alpha"),
    (["--beta", "2"], "--beta"),
    (["--loss", "ipo"], "--tau"),
    (["--tau", "1"], "--tau"),
    (["--delta", "1"], "--delta"),
    (["--low", "0"], "--low"),
    (["--lr", "-1"], "--lr"),
    (["--steps", "0"], "--steps"),
    (["--test-fraction", "1.5"], "--test-fraction"),
    (["--behavior", "dpo", "--beta", "1", "--reference", "missing.pt"], "--reference"),
    (["--loss", "hinge", "--delta", "-1"], "delta"),
]


@pytest.mark.parametrize(("extra", "option"), USER_ERRORS)
def test_user_errors_exit_2_with_one_line_naming_the_option(data, tmp_path, capsys, extra, option):
    code, _, err = run(fit_args(data / "prefs.jsonl", tmp_path / "out", *extra), capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("pbde fit: error:") and option in err
    assert not (tmp_path / "out" / "model.pt").exists()


def test_bad_rows_are_all_listed_with_their_row_numbers(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"xa": 0, "xb": 1, "y": 1}\n{"xa": 0, "xb": \n{"xa": 0, "xb": 1, "y": 3}\n')
    code, _, err = run(fit_args(bad, tmp_path / "o"), capsys)
    assert code == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines[0].startswith("pbde fit: error: DATA") and "2 problem(s)" in lines[0], err
    # rows of a JSON Lines file are its 1-based line numbers
    assert any(line.strip().startswith("row 2:") for line in lines), err
    assert any(line.strip().startswith("row 3, column 'y'") for line in lines), err
    assert "--on-error drop" in err, err


def test_data_errors_exit_2(data, tmp_path, capsys):
    cases = [
        (fit_args(tmp_path / "missing.jsonl", tmp_path / "o"), "DATA"),
        (["fit", data / "prefs.jsonl", "--density", "categorical", "--items", 3, "--steps", 5,
          "--lr", 0.1, "--out", tmp_path / "o"], "--items 3"),
        (["fit", data / "prefs.jsonl", "--density", "categorical", "--steps", 5, "--lr", 0.1,
          "--out", tmp_path / "o"], "--items"),
        (["fit", data / "numbers.jsonl", "--density", "energy", "--low", 0, "--high", 2,
          "--steps", 5, "--lr", 0.1, "--out", tmp_path / "o"], "--low"),
        (["fit", data / "prefs.jsonl", "--density", "categorical", "--items", 5, "--lr", 0.1,
          "--format", "csv", "--out", tmp_path / "o"], "DATA"),
        (["evaluate", data / "prefs.jsonl", data / "prefs.jsonl"], "MODEL"),
        (["evaluate", tmp_path / "missing.pt", data / "prefs.jsonl"], "MODEL"),
    ]  # fmt: skip
    for argv, option in cases:
        code, _, err = run(argv, capsys)
        assert code == 2, argv
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert option in err, (option, err)


def test_evaluate_refuses_a_model_file_that_would_run_code(data, tmp_path, capsys):
    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "code_ran"), "w"))

    torch.save({"format": "pbde-model", "version": 1, "config": Payload()}, tmp_path / "m.pt")
    code, _, err = run(["evaluate", tmp_path / "m.pt", data / "prefs.jsonl"], capsys)
    assert code == 2 and "refuses to unpickle" in err
    assert not (tmp_path / "code_ran").exists()


def test_python_dash_m_pbde_fit(data, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "pbde", *map(str, fit_args(data / "prefs.jsonl", out))]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "report.json").read_text())["train_size"] == 2400
    assert pbde.load_model(out / "model.pt").density.size == 5
    command = [sys.executable, "-m", "pbde", *map(str, fit_args(data / "prefs.jsonl", out)),
               "--behavior", "dpo"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == "pbde fit: error: --behavior dpo needs --beta B (> 0)"


def test_weighted_data_fit_and_weighted_evaluation(data, tmp_path, capsys):
    """A weight column is used: fit minimizes the weighted loss and evaluate reports weighted
    means (checked in numpy against the weights written to test.jsonl)."""
    prefs = pbde.io.read_preferences(data / "prefs.jsonl").prefs
    weight = torch.arange(len(prefs)) % 3 + 0.5  # 0.5, 1.5, 2.5, ...
    weighted = pbde.Preferences(prefs.xa, prefs.xb, prefs.y, weight=weight)
    pbde.io.write_preferences(weighted, tmp_path / "weighted.jsonl")
    out = tmp_path / "run"
    code, _, err = run(fit_args(tmp_path / "weighted.jsonl", out), capsys)
    assert code == 0, err
    assert all(
        "weight" in json.loads(line) for line in (out / "test.jsonl").read_text().splitlines()
    )
    code, stdout, err = run(["evaluate", out / "model.pt", out / "test.jsonl", "--json"], capsys)
    assert code == 0, err
    metrics = json.loads(stdout)
    log_likelihood, accuracy, _ = numpy_heldout(out / "model.pt", out / "test.jsonl")
    # the model computes its logits in float32, as in the unweighted test above
    assert metrics["log_likelihood"] == pytest.approx(log_likelihood, abs=1e-6)
    assert metrics["accuracy"] == pytest.approx(accuracy, abs=1e-12)
    rows = [json.loads(line) for line in (out / "test.jsonl").read_text().splitlines()]
    plain = pbde.Preferences(
        torch.tensor([r["xa"] for r in rows]),
        torch.tensor([r["xb"] for r in rows]),
        torch.tensor([r["y"] for r in rows]),
    )
    unweighted = pbde.cli.evaluate_model(pbde.load_model(out / "model.pt"), plain)
    assert abs(unweighted["log_likelihood"] - metrics["log_likelihood"]) > 1e-4  # weights matter


NAMES = ["Boston", "Ohio State", "Yale", "Rice", "Duke"]


def named_file(path, prefs, names=NAMES, extra=None):
    """The comparisons of ``prefs`` with item ``k`` written as ``names[k]``."""
    with open(path, "w", encoding="utf-8") as handle:
        for a, b, y in zip(prefs.xa.tolist(), prefs.xb.tolist(), prefs.y.tolist(), strict=True):
            handle.write(json.dumps({"xa": names[a], "xb": names[b], "y": y, **(extra or {})}))
            handle.write("\n")
    return path


def test_fit_and_evaluate_with_named_items(data, tmp_path, capsys):
    prefs = pbde.io.read_preferences(data / "prefs.jsonl").prefs
    train_file = named_file(tmp_path / "named.jsonl", prefs, extra={"source": "web"})
    code, out, err = run(fit_args(train_file, tmp_path / "o", "--test-fraction", 0), capsys)
    assert code == 0, err
    assert "columns ignored (not pbde columns): source" in err, err
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    items = json.loads((tmp_path / "o" / "items.json").read_text())["item_names"]
    assert report["ignored_columns"] == ["source"] and report["files"]["items"] == "items.json"
    assert sorted(items) == sorted(NAMES) and report["item_names"] == items
    strengths = report["strengths"]
    assert [s["prob"] for s in strengths] == sorted((s["prob"] for s in strengths), reverse=True)
    # the fitted order follows P_STAR (Ohio State 0.2 < Duke 0.25 < Yale 0.3): names, not ids
    assert [s["item"] for s in strengths[:3]] == ["Yale", "Duke", "Ohio State"], strengths
    assert "strongest items (fitted probability): Yale" in out, out
    # evaluate: a new file names the items in another order of first appearance
    reordered = pbde.Preferences(prefs.xb, prefs.xa, 1 - prefs.y)
    new_file = named_file(tmp_path / "new.jsonl", reordered)
    code, out, err = run(["evaluate", tmp_path / "o" / "model.pt", new_file, "--json"], capsys)
    assert code == 0, err
    named = json.loads(out)
    # the same comparisons as the model's ids (items.json order) give the same numbers
    to_model = torch.tensor([items.index(name) for name in NAMES])
    as_ids = pbde.Preferences(to_model[reordered.xa], to_model[reordered.xb], reordered.y)
    pbde.io.write_preferences(as_ids, tmp_path / "ids.jsonl")
    code, out, _ = run(["evaluate", tmp_path / "o" / "model.pt", tmp_path / "ids.jsonl", "--json"],
                       capsys)  # fmt: skip
    by_id = json.loads(out)
    assert named["log_likelihood"] == pytest.approx(by_id["log_likelihood"], rel=1e-6)
    assert named["accuracy"] == pytest.approx(by_id["accuracy"])
    unknown = named_file(tmp_path / "unknown.jsonl", prefs, names=NAMES[:4] + ["Harvard"])
    code, _, err = run(["evaluate", tmp_path / "o" / "model.pt", unknown], capsys)
    assert code == 2 and "does not know: 'Harvard'" in err and "Traceback" not in err, err


def test_fit_names_more_items_than_allowed_and_misspelled_columns(data, tmp_path, capsys):
    prefs = pbde.io.read_preferences(data / "prefs.jsonl").prefs
    train_file = named_file(tmp_path / "named.jsonl", prefs)
    argv = fit_args(train_file, tmp_path / "o")
    argv[argv.index("--items") + 1] = "4"
    code, _, err = run(argv, capsys)
    assert code == 2 and "--items 4 allows 4 items; DATA names 5" in err, err
    typo = tmp_path / "typo.jsonl"
    typo.write_text('{"xa": 0, "xb": 1, "yy": 1}\n{"xa": 1, "xb": 2, "yy": 0}\n')
    code, _, err = run(fit_args(typo, tmp_path / "o"), capsys)
    assert code == 2 and "column 'yy' is not known: did you mean 'y'?" in err, err
    assert "missing field" not in err


def test_fit_without_steps_or_lr_uses_the_density_defaults(data, tmp_path, capsys):
    out = tmp_path / "o"
    argv = ["fit", data / "prefs.jsonl", "--density", "categorical", "--items", 5,
            "--out", out, "--no-progress"]  # fmt: skip
    code, _, err = run(argv, capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 500 and report["settings"]["lr"] == 0.05, report
    # the defaults fit: the learned probabilities are those of the annotator (2400 pairs)
    logits = torch.load(out / "model.pt", weights_only=True)["state"]["density.logits"]
    assert 0.5 * float((logits.softmax(-1) - P_STAR).abs().sum()) < 0.05


def test_format_option_reads_a_file_whatever_its_suffix(data, tmp_path, capsys):
    renamed = tmp_path / "prefs.txt"
    renamed.write_bytes((data / "prefs.jsonl").read_bytes())
    code, _, err = run(fit_args(renamed, tmp_path / "o"), capsys)
    assert code == 2 and "--format jsonl, csv or parquet" in err and "format=" not in err, err
    code, _, err = run(fit_args(renamed, tmp_path / "o", "--format", "jsonl"), capsys)
    assert code == 0, err
    code, out, err = run(["evaluate", tmp_path / "o" / "model.pt", renamed, "--format", "jsonl"],
                         capsys)  # fmt: skip
    assert code == 0 and "comparisons" in out, err


def test_a_preference_file_passed_as_the_model_is_named_for_what_it_is(data, capsys):
    code, _, err = run(["evaluate", data / "prefs.jsonl", data / "prefs.jsonl"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "is not a pbde model file" in err and "it is text, starting '{" in err, err


def test_the_data_format_examples_in_fit_help_read(tmp_path):
    from pbde.cli import _DATA_FORMAT

    rows, kinds = [], []
    for line in _DATA_FORMAT.splitlines():
        if line.startswith("  {"):
            rows.append(line.strip())
        elif line.startswith("   "):  # a continued example row
            rows[-1] += " " + line.strip()
    assert len(rows) == 4, rows
    for row in rows:
        path = tmp_path / "row.jsonl"
        path.write_text(row + "\n")
        kinds.append(pbde.io.read_preferences(path).items)
    assert kinds == ["id", "text", "text", "text"], kinds
    named = tmp_path / "named.jsonl"
    named.write_text(rows[1] + "\n")
    read = pbde.io.read_preferences(named, items="name")
    assert read.item_names == ["Boston", "Ohio State"] and read.prefs.y.tolist() == [0.0]
    assert read.annotator_names == ["ann7"] and read.prefs.weight.tolist() == [2.0]


def test_column_option_reads_other_column_names(data, tmp_path, capsys):
    rows = [json.loads(line) for line in (data / "prefs.jsonl").read_text().splitlines()]
    renamed = tmp_path / "renamed.jsonl"
    renamed.write_text(
        "".join(
            json.dumps({"left": r["xa"], "right": r["xb"], "win": r["y"], "notes": "-"}) + "\n"
            for r in rows
        )  # fmt: skip
    )
    mapping = ["--column", "left=xa", "--column", "right=xb", "--column", "win=y"]
    code, _, err = run(fit_args(renamed, tmp_path / "a", *mapping, "--column", "notes="), capsys)
    assert code == 0 and "ignored" not in err, err  # notes= asked for: no notice
    code, _, err = run(fit_args(data / "prefs.jsonl", tmp_path / "b"), capsys)
    assert code == 0, err
    first = torch.load(tmp_path / "a" / "model.pt", weights_only=True)["state"]
    second = torch.load(tmp_path / "b" / "model.pt", weights_only=True)["state"]
    assert torch.equal(first["density.logits"], second["density.logits"])  # the same fit
    code, out, err = run(["evaluate", tmp_path / "a" / "model.pt", renamed, *mapping], capsys)
    assert code == 0 and "comparisons" in out and "notes" in err, (out, err)
    for bad, words in [("left", "FILE_COLUMN=NAME"), ("=xa", "FILE_COLUMN=NAME"),
                       ("left=x_a", "unknown names ['x_a']")]:  # fmt: skip
        code, _, err = run(fit_args(renamed, tmp_path / "c", "--column", bad), capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and words in err, err
        assert "--column" in err, err


def test_warnings_are_one_line_without_source_code(tmp_path, capsys):
    # every comparison won by the larger id: separated items, which pbde fit warns about
    rows = [{"xa": a, "xb": b, "y": 1.0} for a in range(3) for b in range(3) if a > b] * 5
    path = tmp_path / "separated.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _, err = run(["fit", path, "--density", "categorical", "--items", 3, "--steps", 5,
                        "--out", tmp_path / "o", "--no-progress"], capsys)  # fmt: skip
    assert code == 0, err
    warning_lines = [line for line in err.splitlines() if "warning" in line]
    assert len(warning_lines) == 1 and warning_lines[0].startswith("pbde fit: warning: "), err
    assert "never lost" in warning_lines[0] and "cli.py" not in err and "pbde.fit(" not in err
