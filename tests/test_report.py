"""The report (issue 22): one colour per arm in every figure, no overlapping labels, a verdict first, one precision
per quantity, and a partial sweep analysed while an empty one is refused in one line.

To look at the figures these tests draw (seven arms with long names, four tasks):
    pytest tests/test_report.py -k overlap --basetemp=/tmp/report-figures   (PNGs under /tmp/report-figures)
"""

import itertools
import re

import pandas as pd
import pytest
from conftest import log_sweep, synthetic_trials
from matplotlib.colors import to_hex

from emoe.analysis import cli, report
from emoe.analysis import stats as S

LONG = ("constrained_kmeans", "hierarchical", "spectral", "random", "contiguous_blocks", "coactivation_graph",
        "dense")


def _curves(trials: pd.DataFrame) -> pd.DataFrame:
    """Three evaluations of every trial, rising to its ID score."""
    return pd.DataFrame([{"run_id": r.run_id, "step": step, "value": r.id_score - 0.01 * (3 - i)}
                         for r in trials.itertuples() for i, step in enumerate((10, 20, 30), start=1)])


@pytest.fixture(scope="module")
def seven():
    """Seven arms with long names over four tasks (sweep order: dense last), two of them planted apart."""
    trials = synthetic_trials(LONG, tasks=4, shift={"hierarchical": 0.02, "random": -0.02})
    return S.analyse(trials, arms=list(LONG), bayes_samples=0), trials


# --- (a) one colour per arm, in every figure ---

def _cd_colours(fig) -> dict:
    """Each arm's label colour in the CD diagram ("arm (2.50)" left, "(2.50) arm" right)."""
    out = {}
    for t in fig.axes[0].texts:
        name = re.sub(r"^\(\d+\.\d+\) | \(\d+\.\d+\)$", "", t.get_text())
        out[name] = to_hex(t.get_color())
    return out


def _scatter_colours(fig) -> dict:
    return {c.get_label(): to_hex(c.lines[0].get_color()) for ax in fig.axes for c in ax.containers}


def _line_colours(fig) -> dict:
    return {line.get_label(): to_hex(line.get_color()) for ax in fig.axes for line in ax.get_lines()}


def test_each_arm_has_one_colour_in_every_figure(seven):
    a, trials = seven
    figures = {"cd": _cd_colours(report.cd_figure(a)), "id_vs_ood": _scatter_colours(report.id_vs_ood_figure(a)),
               "curves": _line_colours(report.learning_curves_figure(a, _curves(trials)))}
    mapping = report.arm_colours(LONG)  # the sweep's declared order
    for name, colours in figures.items():
        assert set(colours) == set(LONG), name
        for arm, colour in colours.items():
            assert colour == mapping[arm], (name, arm)
    assert len(set(mapping.values())) == len(LONG)  # and no two arms share one


def test_colours_follow_the_declared_order_not_the_trials_order(seven):
    """The same sweep analysed from trials in another order (or with an arm still missing) keeps every colour."""
    a, trials = seven
    shuffled = trials.sample(frac=1.0, random_state=1)
    partial = shuffled[shuffled["arm"] != "spectral"]
    b = S.analyse(partial, arms=list(LONG), bayes_samples=0)
    assert _scatter_colours(report.id_vs_ood_figure(b)) == {arm: c for arm, c in
                                                            _scatter_colours(report.id_vs_ood_figure(a)).items()
                                                            if arm != "spectral"}
    assert b.arms == list(LONG)


# --- (d) no label overlaps another ---

def _texts(fig) -> list:
    """Every drawn text of ``fig`` with its window extent: titles, axis labels, legend entries, annotations and the
    tick labels (bottom or top, left or right) inside their axis' view (a tick beyond the view is never drawn)."""
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    texts = [t for t in fig.texts if t.get_text()]
    for legend in fig.legends:
        texts += [legend.get_title(), *legend.get_texts()]
    for ax in (ax for ax in fig.axes if ax.get_visible()):
        texts += [t for t in (ax.title, ax.xaxis.label, ax.yaxis.label, *ax.texts) if t.get_text()]
        for axis, (low, high) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            if axis.get_visible():
                texts += [label for tick in axis.get_major_ticks() for label in (tick.label1, tick.label2)
                          if min(low, high) <= tick.get_loc() <= max(low, high) and label.get_visible()
                          and label.get_text()]
    return [(t.get_text(), t.get_window_extent(renderer)) for t in texts if t.get_visible()]


def _assert_no_overlap(fig) -> None:
    texts = _texts(fig)
    assert len(texts) > 10
    for (a, box_a), (b, box_b) in itertools.combinations(texts, 2):
        both = box_a.intersection(box_a, box_b)
        assert both is None or both.width <= 0.5 or both.height <= 0.5, f"{a!r} overlaps {b!r}"
    boxes = [ax.get_window_extent() for ax in fig.axes if ax.get_visible()]
    for legend in fig.legends:  # outside every panel: it hides no point
        box = legend.get_window_extent()
        assert all(box.intersection(box, p) is None for p in boxes)


@pytest.mark.parametrize("tasks", [1, 4])
def test_no_label_overlaps_another_with_many_long_arm_names(tasks, tmp_path):
    """Seven arms with long names close together (the null: every arm scores alike), on one task and on four: the
    ID-vs-OOD chart names them in one legend outside its panels and the CD diagram gives each label its row."""
    trials = synthetic_trials(LONG, tasks=tasks, seeds=3, noise=0.001)
    a = S.analyse(trials, arms=list(LONG), bayes_samples=0)
    figure = report.id_vs_ood_figure(a)
    _assert_no_overlap(figure)
    figure.savefig(tmp_path / "id_vs_ood.png", bbox_inches="tight")
    cd = report.cd_figure(a)
    _assert_no_overlap(cd)
    assert len(cd.axes[0].texts) == len(LONG)
    cd.savefig(tmp_path / "cd_diagram.png", bbox_inches="tight")


# --- (b) the verdict comes first and says what the primary family found ---

def _first_paragraph(text: str) -> str:
    return text.split("\n\n")[0].replace("\n", " ")


def test_the_verdict_comes_first_and_names_each_arm_that_differs(tmp_path):
    trials = synthetic_trials(("dense", "up", "same", "down"), tasks=8, shift={"up": 0.03, "down": -0.03})
    a = S.analyse(trials, primary=S.Primary(), bayes_samples=0)
    c = a.comparisons.set_index("arm")
    first = _first_paragraph(report.console(a))
    assert first == report.verdict(a) and first.startswith("Verdict. Primary analysis (declared when the sweep was "
                                                           "launched): ood_score (higher is better) over 8 block(s)")
    assert "the baseline dense" in first and "Holm at alpha 0.05" in first and "The family rejects" in first
    level = f"{100 * a.tests['level']:.4g}%"  # three comparisons: 98.33% each, 95% over the family
    for arm, way in (("up", "better"), ("down", "worse")):
        x = c.loc[arm]
        assert (f"{arm} is {way} than dense: mean difference {x['diff']:+.4f} ({100 * x['diff']:+.2f} points), {level} "
                f"interval [{x['these_low']:+.4f}, {x['these_high']:+.4f}] for these tasks and [{x['new_low']:+.4f}, "
                f"{x['new_high']:+.4f}] for a new task like them") in first
    assert "No other arm (same) differs detectably from dense." in first
    page = report.write_html(a, tmp_path / "report.html", "t", []).read_text()
    assert re.search(r"<h1>t</h1><p class='verdict'>Verdict\. Primary analysis", page)


def test_the_verdict_says_what_could_have_been_detected_when_nothing_was():
    a = S.analyse(synthetic_trials(("dense", "a", "b"), tasks=8), bayes_samples=0)
    detectable = a.comparisons["detectable"].abs()
    first = _first_paragraph(report.console(a))
    assert first.startswith("Verdict. Exploratory analysis (no primary analysis was declared when the sweep was "
                            "launched): ood_score")
    assert "The family does not reject: no arm differs detectably from dense." in first
    assert (f"The smallest mean difference this design detects 80% of the time is {detectable.min():.4f} "
            f"({100 * detectable.min():.2f} points) to {detectable.max():.4f}") in first
    few = S.analyse(synthetic_trials(("dense", "a", "b"), tasks=3), bayes_samples=0)
    assert "With 3 block(s) no difference can be significant at this level" in report.verdict(few)


# --- one precision per quantity; the warning names what the report shows ---

def test_a_quantity_is_printed_at_one_precision_everywhere(seven):
    a, _ = seven
    text, table = report.console(a), report.comparisons_display(a).set_index("arm")
    for arm, x in a.comparisons.set_index("arm").iterrows():
        assert f"mean difference {x['diff']:+.4f}" in text and table.loc[arm, "mean difference"] == f"{x['diff']:+.4f}"
        interval = f"[{x['these_low']:+.4f}, {x['these_high']:+.4f}]"
        assert table.loc[arm, "99.17% interval, these tasks"] == interval and f"these tasks: {interval}" in text
    for label in (t.get_text() for t in report.cd_figure(a).axes[0].texts):  # ranks as in the tables: 2 decimals
        assert re.search(r"\(\d+\.\d\d\)", label)
    assert report.PRECISION in text


def test_the_zero_differences_warning_names_what_the_report_shows():
    trials = synthetic_trials(("dense", "a", "b"), tasks=6)
    same = trials["arm"] == "a"
    trials.loc[same, "ood_score"] = trials.loc[trials["arm"] == "dense", "ood_score"].to_numpy()  # a ties dense
    a = S.analyse(trials, bayes_samples=0)
    warning = next(w for w in a.warnings if "zero difference(s) from the baseline" in w)
    assert "zeros column" not in warning and '"zero differences"' in warning
    assert "zero differences 6" in report.console(a)
    assert report.comparisons_display(a).set_index("arm").loc["a", "zero differences"] == 6


# --- (c) a partial sweep is analysed; an empty one is refused in one line ---

@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One MLflow store (created once: seconds) holding a partial sweep and three sweeps with nothing to analyse.

    emoe-partial, two tasks: spectral has not started, hierarchical's task1 trial has not ended, random failed on
    task1 (a failed cell, not a missing one: it ranks last there). emoe-failed: every trial failed. emoe-unended:
    three trial runs that never ended. emoe-empty: no trial."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"
    trials = synthetic_trials(["hierarchical", "random", "dense"], tasks=2, seeds=1)
    partial = trials[~((trials["arm"] == "hierarchical") & (trials["task"] == "task1"))].copy()
    partial.loc[(partial["arm"] == "random") & (partial["task"] == "task1"), "outcome"] = "failed"
    log_sweep(uri, "emoe-partial", partial, ["hierarchical", "random", "spectral", "dense"],
              unended=[("task1", "hierarchical", 0)])
    log_sweep(uri, "emoe-failed", trials.iloc[:2].assign(outcome="failed"), ["hierarchical", "dense"])
    log_sweep(uri, "emoe-unended", trials.iloc[:0], ["a"], unended=[("task0", "a", s) for s in range(3)])
    log_sweep(uri, "emoe-empty", trials.iloc[:0], ["a"])
    return uri


def test_a_partial_sweep_is_analysed_and_its_missing_cells_listed(store, tmp_path, capsys):
    out = tmp_path / "report"
    assert cli.main(["--experiment", "emoe-partial", "--tracking-uri", store, "--out", str(out), "--no-log"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # the verdict is wrapped for the console
    assert ("3 (task, arm) cell(s) without a finished trial yet (a partial sweep: the tables and tests use the "
            "cells that have one): task0/spectral (not run), task1/hierarchical (not ended: counted as failed until "
            "it ends), task1/spectral (not run)") in text
    assert "The sweep is partial: 3 (task, arm) cell(s) have no finished trial yet" in text
    assert "random failed on task1: ranked last there" in text
    assert {"report.html", "id_vs_ood.png", "table.csv"} <= {p.name for p in out.iterdir()}


@pytest.mark.parametrize("experiment, problem", [
    ("emoe-failed", "has 2 trial run(s) (2 failed) and none finished"),
    ("emoe-unended", "has 3 trial run(s) (3 not ended) and none finished"),
    ("emoe-empty", "has no trial runs"),
])
def test_a_sweep_with_no_finished_trial_exits_2_with_one_line(store, tmp_path, capsys, experiment, problem):
    capsys.readouterr()  # MLflow's own log lines, creating the store
    assert cli.main(["--experiment", experiment, "--tracking-uri", store, "--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err == f"error: experiment {experiment} {problem}; nothing to analyse\n"
    assert not (tmp_path / "r").exists()


def test_the_report_shows_the_compute_beside_the_scores():
    """Per arm, over its chosen trials: neurons kept per token and FFN FLOPs summed over the converted blocks, the
    stability averaged over them; a dense arm says so."""
    import types

    import numpy as np

    chosen = pd.DataFrame({"arm": ["emoe", "emoe", "static", "dense"],
                           "active_neurons.block4": [384.0, 384.0, 384.0, np.nan],
                           "active_neurons.block5": [384.0, 384.0, 384.0, np.nan],
                           "ffn_flops.block4": [1e6, 1e6, 1e6, np.nan], "ffn_flops.block5": [2e6, 2e6, 2e6, np.nan],
                           "expert_stability.block4": [0.9, 0.7, 1.0, np.nan],
                           "expert_stability.block5": [0.5, 0.5, 1.0, np.nan]})
    a = types.SimpleNamespace(chosen=chosen, arms=["emoe", "static", "dense"], table=pd.DataFrame({"arm": []}))
    shown = report.compute_display(a)
    assert shown.to_dict("records") == [
        {"arm": "emoe", "neurons kept per token": "768", "FFN MFLOPs per token": "3.000", "expert stability": "0.650"},
        {"arm": "static", "neurons kept per token": "768", "FFN MFLOPs per token": "3.000",
         "expert stability": "1.000"},
        {"arm": "dense", "neurons kept per token": "dense", "FFN MFLOPs per token": "dense", "expert stability": ""}]
