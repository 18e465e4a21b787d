"""``pbde reproduce lm-theory`` in quick mode: every fit next to its exact optimum on the
sequence support (the optima themselves are checked against closed forms in
test_sequence_support.py)."""

from __future__ import annotations

import json

import pytest

from pbde import experiments


@pytest.fixture(scope="module")
def result():
    return experiments.run("lm-theory", experiments.settings_for("lm-theory", quick=True))


def test_fits_reach_their_optimum(result):
    kl = result.metrics["kl_to_optimum"]
    assert set(kl) == {"DPO β=0.5", "DPO β=1", "DPO β=4", "IPO", "length-normalized"}
    for name, value in kl.items():  # quick mode's target for every member
        assert value < 0.05, (name, value)
    # the length-normalized optimum is far from π_ref (KL > 3 nats) and still reached
    assert result.metrics["kl_optimum_to_reference"]["length-normalized"] > 3
    moved = result.metrics["kl_optimum_to_reference"]
    assert moved["DPO β=0.5"] > moved["DPO β=1"] > moved["DPO β=4"]  # eq. 16: 1/β


def test_reference_and_report(result, tmp_path):
    metrics = result.metrics
    assert metrics["support_size"] == 341
    assert metrics["kl_data_to_reference"] < 0.01  # maximum likelihood found the data
    assert 0 < metrics["mass_beyond_reference"] < 1
    for masses in metrics["optimum_mass_by_length"].values():
        assert sum(masses) == pytest.approx(1, abs=1e-9)
    written = result.save(tmp_path)
    assert [p.name for p in written] == ["lm-theory.json", "lm-theory.png"]
    assert json.loads(written[0].read_text())["metrics"]["support_size"] == 341
