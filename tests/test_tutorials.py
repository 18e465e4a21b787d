"""Every tutorial in docs/tutorials runs top to bottom at smoke size and writes its figures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parents[1] / "docs" / "tutorials"

# the figures each tutorial must write (into PBDE_FIGURES_DIR)
EXPECTED_FIGURES = {
    "reward_model_is_a_density.py": ["reward_model_density.png"],
    "define_your_own_annotator.py": ["custom_annotators.png"],
    "fit_a_policy_to_preference_data.py": ["fit_a_policy.png"],
    "annotator_in_the_loop.py": ["annotator_in_the_loop.png", "annotator_in_the_loop_pooled.png"],
    "length_bias_in_sequence_models.py": ["length_bias.png"],
    "align_a_language_model.py": [
        "align_a_language_model.png",
        "align_a_language_model_lengths.png",
    ],
    "what_will_dpo_do.py": ["what_will_dpo_do.png", "what_will_dpo_do_fit.png"],
    "when_annotators_disagree.py": [
        "when_annotators_disagree.png",
        "when_annotators_disagree_preferences.png",
    ],
}


def test_every_tutorial_is_listed():
    assert sorted(p.name for p in TUTORIALS.glob("*.py")) == sorted(EXPECTED_FIGURES)


@pytest.mark.parametrize("name", sorted(EXPECTED_FIGURES))
def test_tutorial_runs_at_smoke_size(name, tmp_path):
    # one torch thread: the smoke models are tiny, and a GRU step with two threads on a busy
    # 2-core machine was seen to take 10x longer (the length-bias tutorial: 11 s vs > 120 s)
    env = dict(
        os.environ,
        PBDE_SMOKE="1",
        MPLBACKEND="Agg",
        PBDE_FIGURES_DIR=str(tmp_path),
        OMP_NUM_THREADS="1",
    )
    completed = subprocess.run(
        [sys.executable, str(TUTORIALS / name)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,  # a hang guard; each takes 5-30 s
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-4000:]
    for figure in EXPECTED_FIGURES[name]:
        path = tmp_path / figure
        assert path.is_file() and path.stat().st_size > 0, f"{name} did not write {figure}"
