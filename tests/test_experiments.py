"""The reproductions in quick mode: each meets its stated threshold against theory.

The thresholds fail if the maths is wrong: a fit that did not move (the divergence of π_pre to
the theory is 0.2–0.6 in TV), a theory with the exponent inverted, or the wrong arm going greedy
would all miss them by far. The paper-scale numbers are in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from pbde import experiments
from pbde.cli import main
from pbde.experiments import ipo_bandit, toy

THEORY_BACKED = ["reward", "dpo-wellspecified", "dpo", "geometric", "ipo"]


@pytest.fixture(scope="module")
def quick_results():
    cache = {}

    def get(name):
        if name not in cache:
            settings = experiments.settings_for(name, quick=True)
            cache[name] = experiments.run(name, settings, progress=False)
        return cache[name]

    return get


@pytest.mark.parametrize("name", THEORY_BACKED)
def test_fits_reach_their_theoretical_optimum(quick_results, name):
    result = quick_results(name)
    runs = result.metrics["runs"]
    for label, m in runs.items():
        assert m["kl_theory_learned"] <= 0.06, (label, m)
        # and the fit moved: at least halfway from π_pre to the theory in total variation
        assert m["tv_theory_learned"] <= 0.5 * m["tv_theory_pretrained"], (label, m)
    assert result.metrics["kl_theory_learned"] == max(m["kl_theory_learned"] for m in runs.values())


def test_dpo_sweep_orders_by_beta(quick_results):
    """Eq. 16: larger β stays closer to π_pre and further from p*."""
    runs = quick_results("dpo").metrics["runs"]
    to_pre = [runs[f"β = {b}"]["kl_pre_learned"] for b in (1, 4, 16)]
    to_star = [runs[f"β = {b}"]["kl_p_star_learned"] for b in (1, 4, 16)]
    assert to_pre[0] > to_pre[1] > to_pre[2]
    assert to_star[0] < to_star[1] < to_star[2]


def test_slic_margin_and_regularizer(quick_results):
    """Fig. 9: λ = 1 pulls the fit toward π_pre; with λ = 0 a margin δ = 1 fits p* better
    than δ = 0, where the hinge is flat and the fit stays near where it started."""
    runs = quick_results("slic").metrics["runs"]
    for delta in ("0", "1"):  # the quick sweep; the paper sweeps δ ∈ {0, .25, .5, 1, 2}
        assert (
            runs[f"δ = {delta}, λ = 1"]["kl_pre_learned"]
            < runs[f"δ = {delta}, λ = 0"]["kl_pre_learned"]
        )
    assert runs["δ = 1, λ = 0"]["kl_p_star_learned"] < runs["δ = 0, λ = 0"]["kl_p_star_learned"]


def test_misspecified_model_is_lukewarm(quick_results):
    m = quick_results("misspecification").metrics
    assert m["kl_theory_learned"] <= 0.02  # the fit reaches the misspecified optimum...
    # ...which is far from both annotators (Fig. 5), farther than the mixture of eq. 24 is
    assert m["kl_annotator1_learned"] > 1.0 and m["kl_annotator2_learned"] > 0.4
    errors = m["mean_abs_prob_error"]
    # Fig. 4: the two-annotator model reproduces the comparison statistics, the single one not
    assert errors["well_specified"] < 0.05 < errors["misspecified"]
    assert errors["well_specified"] < errors["misspecified"] / 3


def test_ipo_bandit(quick_results):
    m = quick_results("ipo-bandit").metrics
    for name, entry in m.items():
        assert entry["dpo_optimum_exists"] is False, name
        assert entry["dpo_min_top"] > 0.95, name  # greedy for every τ and seed
        assert entry["ipo_max_error"] < 0.005, name  # IPO at its optimum (full batch: exact)
        assert entry["ipo_theory_vs_closed_form"] < 1e-6, name


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
def test_ipo_bandit_closed_forms_by_hand(tau):
    """The hand-solved optima: least squares on (θ_w − θ_l − 1/(2τ))² over each data set."""
    c = 1 / (2 * tau)
    for name, (winners, losers, _) in ipo_bandit.DATASETS.items():
        design = np.zeros((3, 3))
        for row, (w, loser) in enumerate(zip(winners, losers, strict=True)):
            design[row, w], design[row, loser] = 1.0, -1.0
        theta = np.linalg.lstsq(design, np.full(3, c), rcond=None)[0]
        expected = np.exp(theta - theta.max()) / np.exp(theta - theta.max()).sum()
        np.testing.assert_allclose(ipo_bandit.closed_form(name, tau).numpy(), expected, atol=1e-9)
    # the statement for the total order
    d1 = ipo_bandit.closed_form(next(iter(ipo_bandit.DATASETS)), tau)
    e = torch.tensor([math.exp(2 / (3 * tau)), math.exp(1 / (3 * tau)), 1.0], dtype=torch.float64)
    assert torch.allclose(d1, e / e.sum())


def test_toy_p_star_is_eq_10():
    x = torch.tensor([-2.5, 0.0, 2.5], dtype=torch.float64)
    p1, p2 = toy.annotator_components()
    mix = 0.4 * p1.prob(x) + 0.6 * p2.prob(x)
    assert torch.allclose(toy.paper_p_star().prob(x).double(), mix.double(), rtol=1e-10)
    by_hand = 1 / (0.25 * math.sqrt(2 * math.pi))  # the peak of component 1 (mass outside: 0)
    assert abs(float(p1.prob(torch.tensor([-2.5]))) - by_hand) < 1e-4


def test_result_files(quick_results, tmp_path):
    result = quick_results("dpo-wellspecified")
    written = result.save(tmp_path)
    report = json.loads((tmp_path / "dpo-wellspecified.json").read_text())
    assert set(report) == {"experiment", "settings", "metrics", "seconds", "figure"}
    assert report["settings"]["steps"] == experiments.settings_for("dpo", quick=True).steps
    assert {"kl_theory_learned", "tv_theory_learned"} <= set(report["metrics"])
    png = tmp_path / "dpo-wellspecified.png"
    assert png in written and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_settings_and_registry():
    assert experiments.names()[:3] == ["reward", "dpo-wellspecified", "dpo"]
    s = experiments.settings_for("dpo", seed=3, steps=None, heatmap_points=5)
    assert s.seed == 3 and s.steps == 8192 and not hasattr(s, "heatmap_points")
    paper = experiments.settings_for("dpo")
    assert (paper.pairs, paper.steps, paper.grid_size, paper.lr) == (2**15, 8192, 2**16, 5e-4)
    with pytest.raises(ValueError, match="Unknown experiment 'nope'"):
        experiments.run("nope")
    with pytest.raises(ValueError, match="at most one"):
        experiments.settings_for("dpo", quick=True, fast=True)


def test_cli_reproduce(tmp_path, capsys):
    assert main(["reproduce", "--list"]) == 0
    listed = capsys.readouterr().out.split("\n")
    assert [line.split()[0] for line in listed if line] == experiments.names()
    assert main(["reproduce", "nope"]) == 2
    assert "Unknown experiment 'nope'" in capsys.readouterr().err
    assert main(["reproduce"]) == 2
    assert main(["reproduce", "dpo", "--quick", "--fast"]) == 2
    out = tmp_path / "out"
    code = main(["reproduce", "ipo-bandit", "--quick", "--steps", "300", "--out", str(out),
                 "--no-progress"])  # fmt: skip
    assert code == 0
    report = json.loads((out / "ipo-bandit.json").read_text())
    assert report["settings"]["steps"] == 300  # the override reached the experiment
    assert (out / "ipo-bandit.png").exists()
    assert "ipo-bandit:" in capsys.readouterr().out
    # an override the experiment has no field for is an error, not silently dropped
    assert main(["reproduce", "ipo-bandit", "--quick", "--pairs", "64", "--out", str(out)]) == 2
    assert "--pairs does not apply to 'ipo-bandit'" in capsys.readouterr().err
    code = main(["reproduce", "dpo-wellspecified", "--quick", "--pairs", "300", "--steps", "3",
                 "--out", str(out), "--no-progress"])  # fmt: skip
    assert code == 0
    report = json.loads((out / "dpo-wellspecified.json").read_text())
    assert (report["settings"]["pairs"], report["settings"]["steps"]) == (300, 3)
    capsys.readouterr()
    # several names run in turn, each name once
    both = tmp_path / "both"
    code = main(["reproduce", "ipo-bandit", "dpo-wellspecified", "ipo-bandit", "--quick",
                 "--steps", "2", "--out", str(both), "--no-progress"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.count("ipo-bandit:") == 1 and printed.count("dpo-wellspecified:") == 1
    for name in ("ipo-bandit", "dpo-wellspecified"):
        assert json.loads((both / f"{name}.json").read_text())["settings"]["steps"] == 2
    assert main(["reproduce", "all", "dpo"]) == 2
    assert "give it alone" in capsys.readouterr().err


def test_fast_recipe_keeps_the_papers_data():
    for name in ("dpo", "misspecification"):
        fast, paper = experiments.settings_for(name, fast=True), experiments.settings_for(name)
        assert fast.pairs == paper.pairs and fast.steps < paper.steps


def test_figure_curves_are_the_densities(quick_results):
    """The curves a figure is drawn from (written to the JSON) are the densities they name: p*
    against scipy's normals (eq. 10), the theory of the well-specified DPO model against p*."""
    from scipy.stats import norm

    figure = quick_results("dpo-wellspecified").report()["figure"]
    x = np.asarray(figure["x"])
    assert (x[0], x[-1], len(x)) == (-7.5, 7.5, 1001)
    eq_10 = 0.4 * norm.pdf(x, -2.5, 0.25) + 0.6 * norm.pdf(x, 2.5, 1.0)
    np.testing.assert_allclose(figure["p_star"], eq_10, rtol=1e-3, atol=1e-6)
    (run,) = figure["runs"].values()
    np.testing.assert_allclose(run["theory"], eq_10, rtol=2e-3, atol=1e-5)  # Fig. 2: p*
    assert set(run) == {"learned", "theory"}


def test_redraw_from_json(tmp_path):
    """A saved run draws the same figure again from its JSON alone, without running."""
    settings = experiments.settings_for("ipo-bandit", quick=True, steps=20)
    result = experiments.run("ipo-bandit", settings, progress=False)
    json_path, png = result.save(tmp_path / "run")
    drawn = png.read_bytes()
    report = json.loads(json_path.read_text())
    for name, entry in report["figure"]["datasets"].items():  # the IPO theory drawn: by hand
        for tau in settings.taus:
            expected = ipo_bandit.closed_form(name, tau).numpy()
            np.testing.assert_allclose(entry["theory"][f"{tau:g}"], expected, atol=1e-6)
        assert np.asarray(entry["IPO"]["0.1"]).shape == (settings.seeds, 3)
    png.unlink()
    assert experiments.redraw(json_path) == png  # next to the report by default
    assert png.read_bytes() == drawn
    again = experiments.redraw(json_path, tmp_path / "elsewhere")
    assert again == tmp_path / "elsewhere" / "ipo-bandit.png" and again.read_bytes() == drawn


def test_redraw_online_from_json(tmp_path):
    """The online figure drawn again from its JSON is the same PNG; its numbers are the
    cumulative query counts of the settings and, per round, the median between the lowest and
    the highest seed's KL."""
    settings = experiments.settings_for(
        "online", quick=True, repeats=2, strategies=("static", "uncertainty"),
        toy_queries=(16, 16), toy_fit_steps=5, toy_pretrain_steps=20, toy_grid_size=129,
        toy_hidden=(8,), toy_eval_points=201, bandit_queries=(16, 16, 32), bandit_fit_steps=5,
    )  # fmt: skip
    result = experiments.run("online", settings, progress=False)
    json_path, png = result.save(tmp_path / "run")
    drawn = png.read_bytes()
    report = json.loads(json_path.read_text())
    figure = report["figure"]
    assert figure["seeds"] == 2
    assert figure["toy"]["thresholds"] == [0.05]
    assert figure["bandit"]["thresholds"] == [0.05, 0.005]
    for part, sizes in (("toy", settings.toy_queries), ("bandit", settings.bandit_queries)):
        curves = figure[part]["curves"]
        assert list(curves) == ["static", "uncertainty"]
        for strategy, curve in curves.items():
            assert curve["queries"] == np.cumsum(sizes).tolist()
            low, median, high = (np.asarray(curve[k]) for k in ("low", "median", "high"))
            assert low.shape == (len(sizes),) and np.all(low <= median) and np.all(median <= high)
            metric = report["metrics"][part][strategy]["kl_per_round"]
            np.testing.assert_allclose(median, metric, rtol=1e-3)  # 4 significant digits
    png.unlink()
    assert experiments.redraw(json_path) == png
    assert png.read_bytes() == drawn
    # a report without the figure's numbers: an error naming the file, no PNG
    old = tmp_path / "old" / "online.json"
    old.parent.mkdir()
    old.write_text(json.dumps({key: report[key] for key in report if key != "figure"}))
    with pytest.raises(ValueError, match="online.json' lacks the numbers the figure of 'online'"):
        experiments.redraw(old)
    assert not (tmp_path / "old" / "online.png").exists()


def test_redraw_refuses_what_it_cannot_draw(tmp_path):
    missing = tmp_path / "missing.json"
    with pytest.raises(ValueError, match="'report' must be an existing JSON file.*missing.json"):
        experiments.redraw(missing)
    broken = tmp_path / "broken.json"
    broken.write_text('{"experiment": "dpo", ')
    with pytest.raises(ValueError, match="broken.json' is not a JSON file"):
        experiments.redraw(broken)
    other = tmp_path / "other.json"
    other.write_text('{"prompt": "x", "chosen": "y"}')
    with pytest.raises(ValueError, match="other.json' is not a report of 'pbde reproduce'"):
        experiments.redraw(other)
    other.write_text('{"experiment": "nope"}')
    with pytest.raises(ValueError, match="unknown experiment 'nope'"):
        experiments.redraw(other)
    # a report written before figures were saved with their numbers
    old = tmp_path / "dpo.json"
    report = {"experiment": "dpo", "settings": {}, "metrics": {"runs": {}}, "seconds": 1.0}
    old.write_text(json.dumps(report))
    with pytest.raises(ValueError, match="dpo.json' lacks the numbers the figure of 'dpo'"):
        experiments.redraw(old)
    assert not (tmp_path / "dpo.png").exists()


def test_cli_redraw(tmp_path, capsys):
    code = main(["reproduce", "ipo-bandit", "--quick", "--steps", "5", "--out", str(tmp_path),
                 "--json", "--no-progress"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed[printed.index("\n{") :])["ipo-bandit"]
    assert "figure" not in summary and "metrics" in summary  # the curves stay in the file
    json_path = tmp_path / "ipo-bandit.json"
    assert "figure" in json.loads(json_path.read_text())
    out = tmp_path / "redrawn"
    assert main(["reproduce", "--from-json", str(json_path), "--out", str(out)]) == 0
    assert (out / "ipo-bandit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(out / "ipo-bandit.png") in capsys.readouterr().out
    assert main(["reproduce", "dpo", "--from-json", str(json_path)]) == 2
    assert "dpo does not apply" in capsys.readouterr().err
    assert main(["reproduce", "--quick", "--from-json", str(json_path)]) == 2
    assert "--quick does not apply" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("not json")
    assert main(["reproduce", "--from-json", str(bad), "--out", str(out)]) != 0
    assert "bad.json' is not a JSON file" in capsys.readouterr().err
