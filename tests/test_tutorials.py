"""The tutorials in docs/tutorials: each runs top to bottom at smoke size through the runner the
site build uses, writes its figures, and its page shows what its code cells printed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HOOKS = Path(__file__).resolve().parents[1] / "docs" / "hooks"
sys.path.insert(0, str(HOOKS))
import run_tutorials  # noqa: E402  (docs/hooks is not a package: the site build loads it by path)

TUTORIALS = run_tutorials.TUTORIALS

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
    # the runner runs each tutorial with one torch thread: the smoke models are tiny, and a GRU
    # step with two threads on a busy 2-core machine was seen to take 10x longer
    run = run_tutorials.execute(name, size="smoke", figures_dir=tmp_path, timeout=300)
    assert len(run["cells"]) == len(run_tutorials.code_cells(TUTORIALS / name))
    assert any(cell["stdout"].strip() for cell in run["cells"]), f"{name} printed nothing"
    for figure in EXPECTED_FIGURES[name]:
        path = tmp_path / figure
        assert path.is_file() and path.stat().st_size > 0, f"{name} did not write {figure}"


# a tutorial of three code cells, the percent format the tutorials use
TOY = """# %% [markdown]
# # A toy

# %%
import warnings
x = 6 * 7
print("x is", x)

# %%
warnings.warn("careful")
warnings.filterwarnings("ignore", message="hush")

# %%
warnings.warn("hush")  # a filter set in an earlier cell still holds

# %%
y = x + 1
"""


def test_runner_records_each_cells_output_in_one_namespace(tmp_path):
    path = tmp_path / "toy.py"
    path.write_text(TOY)
    run = run_tutorials.execute(path, size="smoke")
    assert [cell["stdout"] for cell in run["cells"]] == ["x is 42\n", "", "", ""]
    assert [cell["warnings"] for cell in run["cells"]] == [[], ["UserWarning: careful"], [], []]
    assert run["size"] == "smoke" and run["code_sha256"] == run_tutorials.code_hash(path)


def test_runner_runs_smoke_and_full_size(tmp_path):
    path = tmp_path / "size.py"
    path.write_text('# %%\nimport os\nprint(os.environ.get("PBDE_SMOKE", "unset"))\n')
    assert run_tutorials.execute(path, size="smoke")["cells"][0]["stdout"] == "1\n"
    assert run_tutorials.execute(path, size="full")["cells"][0]["stdout"] == "unset\n"
    with pytest.raises(ValueError, match="size must be one of"):
        run_tutorials.execute(path, size="medium")


def test_runner_names_the_failing_cell(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text(TOY + '\n# %%\nraise KeyError("no such item")\n')
    with pytest.raises(RuntimeError, match=r"code cell 5 of 5(.|\n)*KeyError: 'no such item'"):
        run_tutorials.execute(path, size="smoke")


def test_prose_edits_keep_the_recorded_output_current(tmp_path):
    path = tmp_path / "toy.py"
    path.write_text(TOY)
    before = run_tutorials.code_hash(path)
    path.write_text(TOY.replace("# # A toy", "# # A toy, retitled"))
    assert run_tutorials.code_hash(path) == before
    path.write_text(TOY.replace("6 * 7", "6 * 8"))
    assert run_tutorials.code_hash(path) != before


@pytest.mark.parametrize("name", sorted(EXPECTED_FIGURES))
def test_recorded_full_size_output_is_current(name):
    # the committed output is what the page shows; regenerate it after changing the code with
    # `OMP_NUM_THREADS=1 python -m docs.hooks.run_tutorials NAME`
    assert "full" in run_tutorials.recorded_runs(name), (
        f"docs/tutorials/outputs/{Path(name).stem}.json is missing or stale: run "
        f"`OMP_NUM_THREADS=1 python -m docs.hooks.run_tutorials {Path(name).stem}`"
    )


def test_tutorial_pages_show_their_output(tmp_path):
    markdown = pytest.importorskip("markdown")
    pytest.importorskip("mkdocs")
    import tutorials  # the site-build hook, in docs/hooks

    for name in sorted(EXPECTED_FIGURES):
        stem = Path(name).stem
        runs = run_tutorials.recorded_runs(name)
        run = runs.get("full") or runs.get("smoke")
        if run is None:
            continue  # test_recorded_full_size_output_is_current fails for it
        page = tutorials.render(stem, run, runs.get("smoke", {}).get("seconds"))
        assert "Runs in about" in page or "smoke-size run" in page
        html = markdown.markdown(page, extensions=["pymdownx.superfences", "admonition"])
        for cell in run["cells"]:
            for line in cell["stdout"].splitlines()[:4]:
                # a printed Markdown table is shown as a table: each of its cells is on the page
                for piece in line.strip().strip("|").split("|"):
                    if piece.strip("- "):
                        assert _escaped(piece.strip()) in html, f"{name}: {line!r} not on the page"
        (tmp_path / "tutorials" / stem).mkdir(parents=True)
        (tmp_path / "tutorials" / stem / "index.html").write_text(html)
    assert (tmp_path / "tutorials").is_dir(), "no tutorial has a current recorded run"
    assert tutorials.pages_without_output(tmp_path) == []
    # and a page without output is caught
    (tmp_path / "tutorials" / "silent").mkdir()
    (tmp_path / "tutorials" / "silent" / "index.html").write_text("<pre><code>x</code></pre>")
    assert tutorials.pages_without_output(tmp_path) == [
        str(tmp_path / "tutorials" / "silent" / "index.html")
    ]


def _escaped(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def test_a_printed_markdown_table_is_shown_as_a_table():
    pytest.importorskip("mkdocs")
    import tutorials  # the site-build hook, in docs/hooks

    printed = "| model | loss |\n|---|---|\n| a<b | 0.5 |\nbest: a<b\n"
    block = tutorials.output_block({"stdout": printed, "warnings": []})
    table, text = block.split("\n\n")
    assert "<th>model</th><th>loss</th>" in table
    assert '<td>a&lt;b</td><td align="right">0.5</td>' in table
    assert text == "```{.text .pbde-output .pbde-output-wrap}\nbest: a<b\n```"
    aligned = tutorials.output_block({"stdout": "a   1\nbb  2\n", "warnings": []})
    assert aligned == "```{.text .pbde-output}\na   1\nbb  2\n```"
    assert tutorials.output_block({"stdout": "\n", "warnings": []}) == ""
