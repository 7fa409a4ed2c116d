"""Tables and figures of an ``Analysis``: console text, CSV, Markdown, LaTeX (booktabs), CD diagram, ID-vs-OOD.

Every output opens with ``verdict``, one paragraph on the primary analysis. Every figure colours an arm alike
(``arm_colours``: one palette, in the sweep's declared arm order). Every number has one precision (``PRECISION``).
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from emoe.analysis.stats import BLOCK_NAMES, Analysis
from emoe.tracking import schema as tracking

DIGITS = 4  # decimals of a score in [0, 1], a difference, an interval, an SD, a test statistic, a probability
RANK_DIGITS = 2  # decimals of a mean rank and of a rank-biserial correlation
P_DIGITS = 4  # significant digits of a p-value or a significance level
PRECISION = (f"numbers: scores, differences, intervals, SDs, test statistics and posterior probabilities at {DIGITS} "
             f"decimals (score points, x 100, at {DIGITS - 2}); mean ranks and rank-biserial r at {RANK_DIGITS}; "
             f"p-values and significance levels at {P_DIGITS} significant digits; Wilcoxon's W (a sum of ranks) and "
             "learning rates in full")
COLOURS = "each arm has one colour in every figure: matplotlib's tab10 (tab20 beyond ten arms) in the sweep's arm order"


def _nan(x) -> bool:
    return x is None or (isinstance(x, (float, np.floating)) and math.isnan(x))


def _f(x, sign: bool = False) -> str:
    """A score, difference, interval end, SD or statistic: ``DIGITS`` decimals."""
    return "n/a" if _nan(x) else f"{x:+.{DIGITS}f}" if sign else f"{x:.{DIGITS}f}"


def _r(x) -> str:
    """A mean rank or a rank-biserial correlation: ``RANK_DIGITS`` decimals."""
    return "n/a" if _nan(x) else f"{x:.{RANK_DIGITS}f}"


def _p(x) -> str:
    """A p-value or a significance level: ``P_DIGITS`` significant digits."""
    return "n/a" if _nan(x) else f"{x:.{P_DIGITS}g}"


def _pm(mean, std) -> str:
    """mean ± std over seeds; a single seed has no spread: its value and "(1 seed)"."""
    if _nan(mean):
        return "n/a"
    return f"{_f(mean)} (1 seed)" if _nan(std) else f"{_f(mean)} ± {_f(std)}"


def _column(t: pd.DataFrame, name: str) -> pd.Series:
    """A column of the per-task table, NaN where no trial of a row has it (a partial sweep)."""
    return t[name] if name in t else pd.Series(math.nan, index=t.index)


def _arms(a: Analysis) -> list:
    """The analysis' arms in the sweep's declared order, then any other arm of its table."""
    return list(dict.fromkeys([*a.arms, *a.table["arm"]]))


def arm_colours(arms) -> dict:
    """One colour per arm, the same in every figure: matplotlib's tab10 (tab20 beyond ten arms, evenly spaced
    turbo beyond twenty) in the order of ``arms`` (``Analysis.arms``: the sweep's declared order), so an arm keeps
    its colour in every figure of a report and in every report of the sweep."""
    from matplotlib import colormaps, colors

    arms = list(dict.fromkeys(arms))
    if len(arms) <= 20:
        palette = colormaps["tab10" if len(arms) <= 10 else "tab20"].colors
    else:
        palette = [colormaps["turbo"](i / (len(arms) - 1)) for i in range(len(arms))]
    return {arm: colors.to_hex(palette[i]) for i, arm in enumerate(arms)}


def display_table(a: Analysis) -> pd.DataFrame:
    """The per-arm table as people read it: mean ± std strings, the rank, the selection and the counts."""
    t = a.table
    sets = [tracking.ood_score_set(c[:-len("_mean")]) for c in t.columns
            if tracking.ood_score_set(c) and c.endswith("_mean")]
    out = pd.DataFrame({"task": t["task"], "arm": t["arm"]})

    def spread(metric: str) -> list[str]:
        return [_pm(m, d) for m, d in zip(_column(t, f"{metric}_mean"), _column(t, f"{metric}_std"))]

    out["ID score"] = spread(tracking.ID_SCORE)
    for s in sets:
        out[f"OOD {s}"] = spread(tracking.ood_score_metric(s))
    if f"{tracking.OOD_SCORE}_mean" in t:
        out["OOD mean"] = spread(tracking.OOD_SCORE)
    out[f"rank ({a.metric})"] = [_r(r) for r in _column(t, "rank")]
    out["lr"] = [f"{x:g}" if isinstance(x, float) and not math.isnan(x) else "n/a"
                 for x in _column(t, "learning_rate")]
    out["seeds"] = t["seeds"].fillna("") if "seeds" in t else ""
    out["failed"] = t["failed"]
    out["early stopped"] = t["early_stopped"]
    return out


def _score(a: Analysis) -> bool:
    """Whether the analysed metric is a score in [0, 1] (its differences are also stated in points, x 100)."""
    return a.metric.startswith((tracking.ID_SCORE, "id.", tracking.OOD_SCORE, "ood."))


def _points(a: Analysis, x: float) -> str:
    """A difference in the metric's units, and in score points (x 100) for a score in [0, 1]."""
    return f"{_f(x, sign=True)} ({100 * x:+.{DIGITS - 2}f} points)" if _score(a) else _f(x, sign=True)


def _size(a: Analysis, x: float) -> str:
    """An unsigned size (a detectable difference) in the metric's units, and in score points for a score."""
    return f"{_f(abs(x))} ({100 * abs(x):.{DIGITS - 2}f} points)" if _score(a) else _f(abs(x))


def verdict(a: Analysis) -> str:
    """The report's first paragraph, in plain words: the primary analysis (metric, blocks, baseline, level), whether
    its family rejects, which arms differ from the baseline, which way and by how much (with the intervals), or
    that nothing was detected and the smallest difference the design detects; read from the analysis' own status,
    tests, intervals and detectable effects, never recomputed."""
    s, t = a.status or {}, a.tests
    fam = t.get("family_alpha", t.get("alpha", 0.05))
    kind = ("Primary analysis (declared when the sweep was launched)" if s.get("primary") else
            "Exploratory analysis (" + "; ".join(s.get("why") or ["no primary analysis was declared"]) + ")")
    spent = (f", alpha {_p(t.get('alpha', 0.05))} spent over {s['planned_looks']} planned looks (this is look "
             f"{s['looks']})" if s.get("primary") and s.get("planned_looks", 1) > 1 else "")
    unit = "task, seeds averaged" if a.blocks == "tasks" else "task x seed"
    head = (f"Verdict. {kind}: {a.metric} ({'higher' if a.higher_is_better else 'lower'} is better) over "
            f"{t.get('blocks', 0)} block(s) (each {unit}), every arm against the baseline {a.baseline or '(none)'}, "
            f"Wilcoxon signed-rank tests with Holm at alpha {_p(fam)}{spent}.")
    wil = t.get("wilcoxon")
    if a.baseline is None:
        body = ["No arm is a baseline (none is named dense; --baseline names one), so the family was not tested."]
    elif wil is None or not len(wil):
        body = [f"Nothing was tested: no block has a {a.metric} for every arm, the baseline's included."]
    else:
        body = _verdict_findings(a, wil)
    if len(a.missing):
        body.append(f"The sweep is partial: {len(a.missing)} (task, arm) cell(s) have no finished trial yet "
                    "(listed under Warnings); the rest is analysed.")
    return " ".join([head, *body])


def _verdict_findings(a: Analysis, wil: pd.DataFrame) -> list[str]:
    """The verdict's findings: each arm the family finds different from the baseline, else what it could detect."""
    comp = a.comparisons.set_index("arm") if len(a.comparisons) else pd.DataFrame()
    level = f"{100 * a.tests.get('level', 0.95):.{P_DIGITS}g}%"
    found = []
    for r in wil[wil["significant"]].itertuples():
        c = comp.loc[r.arm] if r.arm in comp.index else pd.Series(dtype=object)
        way = "better" if r.rank_biserial > 0 else "worse"
        if _nan(c.get("diff")):
            found.append(f"{r.arm} is {way} than {a.baseline} (p_holm = {_p(r.p_holm)}; no mean difference: "
                         f"{c.get('why_not') or 'none estimable'})")
            continue
        spans = [f"[{_f(c[f'{e}_low'], True)}, {_f(c[f'{e}_high'], True)}] for {name}"
                 for e, name in (("these", "these tasks"), ("new", "a new task like them"))
                 if not _nan(c.get(f"{e}_low"))]
        found.append(f"{r.arm} is {way} than {a.baseline}: mean difference {_points(a, c['diff'])}"
                     + (f", {level} interval {' and '.join(spans)}" if spans else ", no interval")
                     + f" (p_holm = {_p(r.p_holm)})")
    rest = [arm for arm in wil["arm"] if arm not in set(wil.loc[wil["significant"], "arm"])]
    if found:
        return (["The family rejects (positive = better): " + "; ".join(found) + "."]
                + ([f"No other arm ({', '.join(map(str, rest))}) differs detectably from {a.baseline}."]
                   if rest else []))
    out = [f"The family does not reject: no arm differs detectably from {a.baseline}."]
    d = comp["detectable"] if "detectable" in comp else pd.Series(dtype=float)
    finite = d[np.isfinite(d.astype(float))].abs() if len(d) else d
    if len(finite):
        low, high = finite.min(), finite.max()
        size = _size(a, low) if math.isclose(low, high) else f"{_size(a, low)} to {_size(a, high)}, by arm"
        out.append(f"The smallest mean difference this design detects 80% of the time is {size}.")
    elif len(d) and (d == math.inf).any():
        out.append(f"With {a.tests.get('blocks', 0)} block(s) no difference can be significant at this level: "
                   "it needs more blocks (see Warnings).")
    else:
        out.append("The smallest detectable difference is not estimable (fewer than 2 blocks, or no spread).")
    return out


def status_lines(a: Analysis) -> list[str]:
    """What the tests lead with: whether this is the sweep's declared primary analysis, and the looks."""
    s = a.status or {"primary": False, "why": ["no primary analysis was declared"], "looks": 1, "planned_looks": 1,
                     "family_alpha": a.tests.get("alpha", 0.05)}
    what = (f"{a.metric} over blocks = {a.blocks}, every arm against {a.baseline or 'n/a'}, alpha "
            f"{_p(a.tests.get('alpha', 0.05))}")
    if s["primary"]:
        spent = (f"; look {s['looks']} of {s['planned_looks']} planned: the family is tested at alpha / "
                 f"{s['planned_looks']} = {_p(s['family_alpha'])} (alpha spent over the looks)"
                 if s["planned_looks"] > 1 else f"; look {s['looks']} of 1 planned")
        return [f"PRIMARY ANALYSIS (declared when the sweep was launched): {what}{spent}. Everything after the "
                "primary family is exploratory."]
    return [f"EXPLORATORY ANALYSIS ({what}): " + "; ".join(s["why"]) + ". No p-value below is confirmatory."]


def tests_text(a: Analysis) -> list[str]:
    """The tests as text: the primary family, the selection's inflation, then the exploratory tests."""
    t = a.tests
    lines = status_lines(a) + [f"blocks: {t.get('blocks', 0)} ({BLOCK_NAMES[a.blocks]}), arms: {t.get('arms', 0)}"]
    if "wilcoxon" in t and len(t["wilcoxon"]):
        lines += _family_lines(a)
    return lines + _selection_lines(a) + _exploratory_lines(a)


def _family_lines(a: Analysis) -> list[str]:
    """Each arm against the baseline: the test, the mean difference with its intervals, and the test's power."""
    t, c = a.tests, a.comparisons
    fam = t.get("family_alpha", t.get("alpha", 0.05))
    level = t.get("level", 1 - fam)
    lines = [f"{'Primary family' if a.status.get('primary') else 'Family'}: each arm against {a.baseline} "
             f"(difference in {a.metric}, positive = better), Wilcoxon signed-rank (zeros split between the "
             f"signs, exact p), Holm at alpha {_p(fam)}; {_p(100 * level)}% t-intervals (simultaneous "
             f"{_p(100 * (1 - fam))}% over the family):"]
    comp = c.set_index("arm") if len(c) else pd.DataFrame()
    for _, r in t["wilcoxon"].iterrows():
        sig = "significant" if r["significant"] else "not significant"
        lines.append(f"  {r['arm']}: W = {r['W']:g}, p = {_p(r['p'])}, p_holm = {_p(r['p_holm'])} ({sig}); "
                     f"zero differences {int(r['zeros'])}; rank-biserial r = {_r(r['rank_biserial'])}")
        if r["arm"] not in comp.index:
            continue
        x = comp.loc[r["arm"]]
        if pd.isna(x.get("diff")):
            lines.append(f"    no mean difference: {x.get('why_not')}")
        else:
            lines.append(f"    mean difference {_points(a, x['diff'])} over {int(x['tasks'])} task(s), "
                         f"{int(x['seeds'])} seed(s) each")
            for est, name in (("these", "these tasks"), ("new", "a new task")):
                lo, hi = x.get(f"{est}_low"), x.get(f"{est}_high")
                lines.append(f"    {name}: [{_f(lo, True)}, {_f(hi, True)}]" if not pd.isna(lo) else
                             f"    {name}: no interval ({_why(x.get('why_not'), name)})")
        d, sd = x.get("detectable"), x.get("sd_blocks")
        what = ("none: too few blocks for any difference to be significant" if d == math.inf else
                "not estimable (fewer than 2 blocks, or no spread)" if pd.isna(d) else
                f"{_f(abs(d))} (" + (f"{100 * abs(d):.{DIGITS - 2}f} points; " if _score(a) else "")
                + f"SD of the differences over blocks {_f(sd)})")
        lines.append(f"    power: smallest mean difference detected 80% of the time at Holm's hardest threshold "
                     f"(alpha / {len(t['wilcoxon'])}): {what}")
    return lines


def _selection_lines(a: Analysis) -> list[str]:
    """How much choosing on the ID score inflates it (``emoe.analysis.selection.inflation``)."""
    s = a.selection
    if not len(s):
        return []
    epochs = bool(s["epochs"].any()) if "epochs" in s else False
    what = "the rate and the best evaluation" if epochs else "the rate"
    chose = s[(s["rates"] > 1) | s.get("epochs", False)]
    if not len(chose):
        return ["Selection: one learning rate per arm, so none was chosen on ID; the best evaluation within each "
                "trial is chosen on the same split when --keep-best is on (not undone here)."]
    worst = chose.iloc[int(np.argmax(chose["inflation"].to_numpy()))]
    return [f"Selection: the ID score is the selection criterion (the best learning rate and evaluation on the same "
            f"ID split). Choosing {what} inflates it by {_f(chose['inflation'].mean(), True)} on average (largest "
            f"{_f(worst['inflation'], True)}, {worst['arm']} on {worst['task']}): the selected score minus each "
            "seed's score where the choice made on the other seeds lands."
            + ("" if epochs else " The best-evaluation choice within a trial is not undone.")
            + " OOD scores are never selected on."]


def _exploratory_lines(a: Analysis) -> list[str]:
    """Friedman, Iman-Davenport, Nemenyi, the pairwise Wilcoxon-Holm tests and the Bayesian signed-rank test."""
    t, c = a.tests, a.comparisons
    alpha = t.get("alpha", 0.05)
    lines = [f"Exploratory (not part of the primary family; alpha {_p(alpha)}, no correction across analyses):"]
    if "friedman" in t:
        f, i = t["friedman"], t["iman_davenport"]
        sig = "significant" if f.get("significant") else "not significant"
        lines.append(f"  Friedman chi2({f['df']}) = {_f(f['chi2'])}, p = {_p(f['p'])} (asymptotic), "
                     f"p = {_p(f['p_permutation'])} ({f['permutation']} permutation; {sig})")
        lines.append(f"  Iman-Davenport F({i['df1']}, {i['df2']}) = {_f(i['F'])}, p = {_p(i['p'])}"
                     if math.isfinite(i["F"]) else "  Iman-Davenport F: undefined (every block ranks the arms alike)")
        lines.append(f"  Nemenyi critical difference (alpha = {_p(alpha)}): {_f(t['nemenyi_cd'])} (the largest "
                     f"possible rank difference: {t['max_rank_difference']:g}); it compares arms through the mean "
                     "ranks of all of them, so a third arm can move it")
    if "pairwise" in t and len(t["pairwise"]):
        pw = t["pairwise"]
        sig = pw[pw["significant"]]
        lines.append(f"  Pairwise Wilcoxon signed-rank, Holm over all {len(pw)} pairs (each pair on its own blocks: no "
                     "other arm can move it; the CD diagram draws these): "
                     + (f"{len(sig)} pair(s) differ" if len(sig) else "no pair differs"))
        for _, r in sig.iterrows():
            better, worse = (r["a"], r["b"]) if r["rank_biserial"] > 0 else (r["b"], r["a"])
            size = f"mean difference {_f(abs(r['diff']))}" if not pd.isna(r["diff"]) else "a failed cell"
            lines.append(f"    {better} > {worse}: {size}, p = {_p(r['p'])}, p_holm = {_p(r['p_holm'])}, "
                         f"rank-biserial r = {_r(abs(r['rank_biserial']))}")
    if len(c) and "p_better" in c:
        for _, r in c.dropna(subset=["p_better"]).iterrows():
            lines.append(f"  Bayesian signed-rank {r['arm']} vs {a.baseline}: P(better) = {_f(r['p_better'])}, "
                         f"P(equivalent) = {_f(r['p_rope'])}, P(worse) = {_f(r['p_worse'])}")
    return lines


def _why(text, name: str) -> str:
    for part in str(text or "").split("; "):
        if part.startswith(name):
            return part.split(": ", 1)[-1]
    return str(text or "not estimable")


def paper_display(a: Analysis) -> pd.DataFrame:
    """The paper's table (per arm, over tasks) as people read it; empty for a one-task analysis."""
    from emoe.analysis.selection import image_sweep

    s = a.summary
    if s.empty or s["tasks"].max() < 2:
        return pd.DataFrame()
    failed = s["failed"] if "failed" in s else [""] * len(s)
    return pd.DataFrame({"arm": s["arm"], "tasks": s["tasks"].astype(int),
                         "avg ID score": [_f(x) if not f else "failed" for x, f in zip(s["id_score"], failed)],
                         "avg OOD score": [_f(x) if not f else "failed" for x, f in zip(s["ood_score"], failed)],
                         # the paper's GLUE-X rank; an image sweep's blocks are (dataset, held-out domain) pairs
                         ("held-out domain rank" if image_sweep(a.chosen) else "GLUE-X OOD rank"):
                             [_r(x) for x in s["ood_rank"]],
                         "ID rank": [_r(x) for x in s["id_rank"]],
                         "failed on": [f or "" for f in failed]})


def comparisons_display(a: Analysis) -> pd.DataFrame:
    """Each arm against the baseline as people read it, at the report's one precision: the family's test, the mean
    difference, its intervals, the smallest detectable difference and, from 5 blocks, the Bayesian probabilities."""
    c = a.comparisons
    if c.empty:
        return pd.DataFrame()
    wil = a.tests.get("wilcoxon")
    wil = wil.set_index("arm") if wil is not None and len(wil) else pd.DataFrame()
    level = f"{_p(100 * a.tests.get('level', 0.95))}%"
    rows = []
    for _, r in c.iterrows():
        w = wil.loc[r["arm"]] if r["arm"] in wil.index else pd.Series(dtype=object)
        row = {"arm": r["arm"], "vs": r["vs"], "p": _p(w.get("p")), "p_holm": _p(w.get("p_holm")),
               "significant": "yes" if bool(w.get("significant", False)) else "no",
               "zero differences": "n/a" if _nan(w.get("zeros")) else int(w["zeros"]),
               "rank-biserial r": _r(w.get("rank_biserial")), "mean difference": _f(r.get("diff"), True)}
        for est, name in (("these", "these tasks"), ("new", "a new task")):
            lo, hi = r.get(f"{est}_low"), r.get(f"{est}_high")
            row[f"{level} interval, {name}"] = "none" if _nan(lo) else f"[{_f(lo, True)}, {_f(hi, True)}]"
        d = r.get("detectable")
        row["smallest detectable"] = "none" if d == math.inf else _f(None if _nan(d) else abs(d))
        if "p_better" in c:
            row.update({name: _f(r.get(k)) for k, name in (("p_better", "P(better)"), ("p_rope", "P(equivalent)"),
                                                           ("p_worse", "P(worse)"))})
        row["why no interval"] = r.get("why_not") or ""
        rows.append(row)
    return pd.DataFrame(rows)


def rules_display(a: Analysis) -> pd.DataFrame:
    """Both selection rules per (task, arm): the learning rate each chose, the ID (test) and OOD scores of its
    choice, and the oracle's gap over the clean rule; empty without a development split."""
    r = getattr(a, "rules", pd.DataFrame())
    if r is None or r.empty:
        return pd.DataFrame()
    rows = []
    for _, x in r.iterrows():
        row = {"task": x["task"], "arm": x["arm"], "oracle lr": f"{x['oracle_lr']:.2g}",
               "clean lr": f"{x['clean_lr']:.2g}"}
        for m in (tracking.ID_SCORE, tracking.OOD_SCORE):
            if f"gap.{m}" in r:
                row[f"oracle {m}"], row[f"clean {m}"] = _f(x[f"oracle.{m}"]), _f(x[f"clean.{m}"])
                row[f"gap {m}"] = _f(x[f"gap.{m}"], sign=True)
        rows.append(row)
    return pd.DataFrame(rows)


RULES_TEXT = ("oracle: learning rate (and, with keep_best, epoch) chosen on the ID validation set it reports, as "
              "the official code; clean: chosen on a development split carved from the training set, the "
              "validation set reported as a test set; gap = oracle - clean (how much choosing on the reported set "
              "flatters it)")


def compute_display(a: Analysis) -> pd.DataFrame:
    """The compute beside the scores: per arm, over its chosen trials, the wall time and accelerator time per trial,
    the trainable parameters, the neurons a token keeps and the FFN FLOPs per token (summed over the converted
    blocks; the router's included), and the router's stability between evaluations (mean over blocks); a column
    only where some trial logged it; empty when none did (older trials)."""
    c = a.chosen
    blocks = {name: [col for col in c.columns if col.startswith(name + ".block")]
              for name in (tracking.ACTIVE_NEURONS, tracking.FFN_FLOPS, tracking.EXPERT_STABILITY)}
    timed = [m for m in (tracking.WALL_TIME, tracking.ACCELERATOR_TIME, tracking.TRAINABLE_PARAMS)
             if m in c and c[m].notna().any()]
    if c.empty or not (blocks[tracking.ACTIVE_NEURONS] or timed):
        return pd.DataFrame()
    rows = []
    for arm in _arms(a):
        trials = c[c["arm"] == arm]
        if trials.empty:
            continue
        row = {"arm": arm}
        if tracking.WALL_TIME in timed:
            row["wall time per trial"] = _duration(trials[tracking.WALL_TIME].mean())
        if tracking.ACCELERATOR_TIME in timed:
            row["GPU time per trial"] = _duration(trials[tracking.ACCELERATOR_TIME].mean())
        if tracking.TRAINABLE_PARAMS in timed:
            n = trials[tracking.TRAINABLE_PARAMS].mean()
            row["trainable params"] = "" if _nan(n) else f"{n / 1e6:,.2f}M"
        if blocks[tracking.ACTIVE_NEURONS]:
            active = trials[blocks[tracking.ACTIVE_NEURONS]].sum(axis=1, min_count=1).mean()
            flops = trials[blocks[tracking.FFN_FLOPS]].sum(axis=1, min_count=1).mean()
            stable = trials[blocks[tracking.EXPERT_STABILITY]].mean(axis=1).mean() \
                if blocks[tracking.EXPERT_STABILITY] else float("nan")
            row.update({"neurons kept per token": "dense" if _nan(active) else f"{active:,.0f}",
                        "FFN MFLOPs per token": "dense" if _nan(flops) else f"{flops / 1e6:.3f}",
                        "expert stability": "" if _nan(stable) else f"{stable:.3f}"})
        rows.append(row)
    return pd.DataFrame(rows)


def ranks_display(a: Analysis) -> pd.DataFrame:
    """Per arm: the Friedman mean rank with its bootstrap interval and P(first), the IQM with its interval, and
    P(improvement) over the baseline with its interval (``emoe.analysis.ranks``); empty when not computed."""
    beyond = getattr(a, "beyond", {}) or {}
    r = beyond.get("rank_intervals")
    if r is None or r.empty:
        return pd.DataFrame()
    imp = beyond.get("improvement")
    imp = imp.set_index("arm") if imp is not None and len(imp) else pd.DataFrame()
    rows = []
    for x in r.itertuples(index=False):
        row = {"arm": x.arm, "mean rank": _r(x.mean_rank), "rank interval": f"[{_r(x.low)}, {_r(x.high)}]",
               "P(first)": _f(x.p_first)}
        if x.arm in imp.index:
            i = imp.loc[x.arm]
            row["IQM"] = f"{_f(i['iqm'])} [{_f(i['iqm_low'])}, {_f(i['iqm_high'])}]"
            row[f"P(> {a.baseline})"] = "" if _nan(i["p_improve"]) else \
                f"{_f(i['p_improve'])} [{_f(i['p_low'])}, {_f(i['p_high'])}]"
        rows.append(row)
    return pd.DataFrame(rows)


RANKS_TEXT = ("exploratory, beside the primary analysis: mean ranks over the same blocks, with 95% intervals from a "
              "two-level bootstrap (tasks, then each task's seeds; with one task, its seeds): the rank an arm would "
              "get over tasks like these; P(first): the share of resamples where the arm ranks first (ties split); "
              "IQM: the interquartile mean over every (task, seed) run and P(> baseline): the probability that a run "
              "of the arm beats one of the baseline, averaged over tasks (rliable's definitions; stratified "
              "bootstrap intervals); a failed run has no value here (the primary analysis ranks it last)")
BUDGET_TEXT = ("the expected best ID score after n configurations drawn from the arm's trials (each learning rate x "
               "seed one configuration; Dodge et al. 2019), with +- one SD: where the curves cross, which arm is "
               "better depends on the tuning budget")


VARIANCE_TEXT = ("exploratory: how much of each arm's spread over every trial (all learning rates) each crossed "
                 "source explains: a crossed random-effects model (statsmodels MixedLM, REML) with one variance "
                 "component per source that varies (training seed: initialisation and dropout; data_seed: the "
                 "data order; cluster_seed: the partition; learning rate) and the residual; share = component / "
                 "total. emoe sweep variance runs the crossed design")


NO_VARIANCE = ("Not computed for this sweep: its trials cross fewer than two of the training seed, the data order, the "
               "clustering seed and the learning rate: emoe sweep variance --seeds 0,1,2 --learning-rates 5e-5,1e-4 runs "
               "the crossed design.")


def ranks_caveat(a: Analysis) -> str:
    """A line where the bootstrap has too few blocks to speak for tasks like these."""
    r = (getattr(a, "beyond", {}) or {}).get("rank_intervals")
    n = int(r["blocks"].iloc[0]) if r is not None and len(r) else 0
    if 0 < n < 5:
        return (f"Only {n} block(s): a bootstrap over so few resamples the same few values, so these intervals "
                "understate the uncertainty (an interval of one value means every resample agreed); read them as "
                "descriptive.")
    return ""


def variance_display(a: Analysis) -> pd.DataFrame:
    beyond = getattr(a, "beyond", {}) or {}
    v = beyond.get("variance")
    if v is None or len(v) == 0:
        return pd.DataFrame()
    from emoe.analysis.variance import display

    return display(v)


DOMAINBED_TEXT = ("DomainBed's table (collect_results.py): per dataset, each held-out domain's accuracy in percent, "
                  "the mean over seeds of the selected trials and its error std(acc / sqrt(n)) (DomainBed's, the "
                  "population SD over sqrt(n)), and Avg, the mean of the domains' means")


def domainbed_display(a: Analysis) -> pd.DataFrame:
    """An image sweep's results as DomainBed tables them (``emoe.domainbed.domainbed_table``): one row per (dataset,
    arm), one column per held-out domain and ``Avg``; empty for text sweeps."""
    from emoe.analysis.selection import image_sweep
    from emoe.domainbed import domainbed_table
    from emoe.vision import split_name

    chosen = a.chosen
    if chosen.empty or not image_sweep(chosen) or tracking.OOD_SCORE not in chosen:
        return pd.DataFrame()
    chosen = chosen[chosen[tracking.OOD_SCORE].notna()]
    frame = pd.DataFrame({"dataset": [split_name(t)[0] for t in chosen["task"]],
                          "test_env": [split_name(t)[1] for t in chosen["task"]],
                          "arm": chosen["arm"].to_numpy(), "test_acc": chosen[tracking.OOD_SCORE].to_numpy()})
    rows = []
    for (dataset, arm), group in frame.groupby(["dataset", "arm"], sort=False):
        table = domainbed_table(group)
        row = {"dataset": dataset, "arm": arm}
        for _, r in table.iterrows():
            row[str(r["test_env"])] = f"{r['mean']:.1f}" + ("" if _nan(r["err"]) else f" ± {r['err']:.1f}")
        rows.append(row)
    out = pd.DataFrame(rows)
    order = {arm: i for i, arm in enumerate(_arms(a))}
    return out.sort_values(["dataset", "arm"], key=lambda c: c.map(order) if c.name == "arm" else c,
                           kind="stable").reset_index(drop=True)


def appendix_text(a: Analysis) -> str:
    """The reviewer's paragraph (``emoe.analysis.paragraph``); empty for an analysis without its trials."""
    from emoe.analysis.paragraph import paragraph

    trials = getattr(a, "trials", None)
    return paragraph(a) if isinstance(trials, pd.DataFrame) and len(trials) else ""


def _duration(seconds: float) -> str:
    if _nan(seconds):
        return ""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200 else \
        f"{seconds / 3600:.1f} h"


def console(a: Analysis) -> str:
    """The whole report as text: the verdict first, then the method, the tables, the tests and the warnings."""
    parts = [textwrap.fill(verdict(a), width=120), "", "Method:"] + [f"  - {m}" for m in a.method + [PRECISION]]
    paper = paper_display(a)
    if not paper.empty:
        parts += ["", "Over tasks (average scores over the same tasks; Friedman ranks over tasks, 1 = best; a failed "
                  "cell ranks last and leaves its arm without an average):", paper.to_string(index=False)]
    parts += ["", "Per task:" if not paper.empty else "", display_table(a).to_string(index=False), ""] + tests_text(a)
    domainbed = domainbed_display(a)
    if not domainbed.empty:
        parts += ["", f"{DOMAINBED_TEXT}:", domainbed.to_string(index=False)]
    compute = compute_display(a)
    if not compute.empty:
        parts += ["", "Compute (per trial; converted blocks per token):", compute.to_string(index=False)]
    rules = rules_display(a)
    if not rules.empty:
        parts += ["", f"Selection rules (this report: {a.rule}; {RULES_TEXT}):", rules.to_string(index=False)]
    ranked = ranks_display(a)
    if not ranked.empty:
        parts += ["", "Ranks with intervals (exploratory; see the report for how):", ranked.to_string(index=False)]
        if ranks_caveat(a):
            parts.append(ranks_caveat(a))
    parts += ["", "Grid: " + "; ".join((getattr(a, "beyond", {}) or {}).get("grid", []) or ["not checked"])]
    if a.warnings:
        parts += ["", "Warnings:"] + [f"  ! {w}" for w in a.warnings]
    return "\n".join(parts)


def write_files(a: Analysis, out: Path, title: str, curves: pd.DataFrame | None = None) -> list[Path]:
    """CSV (numbers), Markdown and LaTeX (booktabs) tables, a CD diagram, an ID-vs-OOD chart, learning curves (given
    ``curves``, ``emoe.analysis.results.load_curves`` of the chosen trials) and one self-contained HTML report. The
    figures share one colour per arm (``arm_colours``, computed here once)."""
    out.mkdir(parents=True, exist_ok=True)
    shown = display_table(a)
    paths = [out / "table.csv", out / "table.md", out / "table.tex", out / "tests.txt"]
    a.table.to_csv(paths[0], index=False)
    paper = paper_display(a)
    md = [f"# {title}", "", verdict(a), ""]
    if not paper.empty:
        md += ["## Over tasks", "", paper.to_markdown(index=False), "", "## Per task", ""]
        a.summary.to_csv(out / "summary.csv", index=False)
        paths.append(out / "summary.csv")
    md += [shown.to_markdown(index=False), "", "## Tests", ""] + [f"    {l}" for l in tests_text(a)]
    domainbed = domainbed_display(a)
    if not domainbed.empty:
        md += ["", "## DomainBed's table", "", DOMAINBED_TEXT + ".", "", domainbed.to_markdown(index=False)]
        domainbed.to_csv(out / "domainbed.csv", index=False)
        paths.append(out / "domainbed.csv")
    compute = compute_display(a)
    if not compute.empty:
        md += ["", "## Compute (per trial; converted blocks per token)", "", compute.to_markdown(index=False)]
    rules = rules_display(a)
    if not rules.empty:
        md += ["", f"## Selection rules (this report: {a.rule})", "", RULES_TEXT, "", rules.to_markdown(index=False)]
    ranked = ranks_display(a)
    if not ranked.empty:
        md += ["", "## Ranks with intervals", "", RANKS_TEXT + ". " + ranks_caveat(a), "",
               ranked.to_markdown(index=False)]
    var = variance_display(a)
    md += ["", "## Sources of variance", "", VARIANCE_TEXT, ""] + \
        ([var.to_markdown(index=False)] if not var.empty else [NO_VARIANCE])
    md += ["", "## Budget and grid", "", BUDGET_TEXT, ""] + [f"- {line}" for line in (a.beyond or {}).get("grid", [])]
    appendix = appendix_text(a)
    if appendix:
        md += ["", "## For the appendix", "", appendix]
        (out / "appendix.txt").write_text(appendix + "\n")
        paths.append(out / "appendix.txt")
    md += ["", "## Method", ""] + [f"- {m}" for m in a.method + [PRECISION]]
    if a.warnings:
        md += ["", "## Warnings", ""] + [f"- {w}" for w in a.warnings]
    paths[1].write_text("\n".join(md) + "\n")
    paths[2].write_text(shown.style.hide(axis="index").to_latex(hrules=True, column_format="l" * shown.shape[1])
                        .replace("±", r"$\pm$"))
    paths[3].write_text("\n".join([verdict(a), ""] + tests_text(a) + [""] + a.method + [PRECISION, ""] + a.warnings)
                        + "\n")
    colours = arm_colours(_arms(a))
    figures = [p for p in (cd_diagram(a, out / "cd_diagram.png", colours),
                           id_vs_ood(a, out / "id_vs_ood.png", colours),
                           learning_curves(a, curves, out / "learning_curves.png", colours),
                           *beyond_figures(a, out, colours)) if p]
    paths += figures
    paths.append(write_html(a, out / "report.html", title, figures))
    return paths


def write_html(a: Analysis, path: Path, title: str, figures: list[Path]) -> Path:
    """One self-contained HTML file (figures embedded): the verdict, the tables, tests, comparisons, method and
    warnings. The MLflow UI slows down past a few hundred runs; this opens anywhere."""
    import base64
    import html

    def table(df: pd.DataFrame) -> str:  # every cell is already a string at the report's precision
        return df.to_html(index=False, border=0, classes="t", na_rep="n/a")

    parts = [f"<h1>{html.escape(title)}</h1>", f"<p class='verdict'>{html.escape(verdict(a))}</p>"]
    paper = paper_display(a)
    if not paper.empty:
        parts += ["<h2>Over tasks</h2>", "<p>Average scores over tasks; Friedman ranks over tasks, 1 = best.</p>",
                  table(paper)]
    parts += ["<h2>Per task</h2>", table(display_table(a)), "<h2>Tests</h2>",
              "<details><summary>every test, in full (the verdict above sums them up)</summary><pre>"
              + html.escape("\n".join(tests_text(a))) + "</pre></details>"]
    if len(a.comparisons):
        parts += [f"<h2>Against {html.escape(str(a.baseline))}</h2>", table(comparisons_display(a))]
    domainbed = domainbed_display(a)
    if not domainbed.empty:
        parts += ["<h2>DomainBed's table</h2>", f"<p>{html.escape(DOMAINBED_TEXT)}.</p>", table(domainbed)]
    compute = compute_display(a)
    if not compute.empty:
        parts += ["<h2>Compute (per trial; converted blocks per token)</h2>", table(compute)]
    rules = rules_display(a)
    if not rules.empty:
        parts += [f"<h2>Selection rules (this report: {html.escape(a.rule)})</h2>",
                  f"<p>{html.escape(RULES_TEXT)}.</p>", table(rules)]
    ranked = ranks_display(a)
    if not ranked.empty:
        parts += ["<h2>Ranks with intervals</h2>", f"<p>{html.escape(RANKS_TEXT)}. {html.escape(ranks_caveat(a))}</p>",
                  table(ranked)]
    var = variance_display(a)
    parts += ["<h2>Sources of variance</h2>", f"<p>{html.escape(VARIANCE_TEXT)}.</p>",
              table(var) if not var.empty else f"<p>{html.escape(NO_VARIANCE)}</p>"]
    grid = (a.beyond or {}).get("grid", [])
    if grid:
        parts += ["<h2>Grid</h2><ul>" + "".join(f"<li>{html.escape(g)}</li>" for g in grid) + "</ul>"]
    appendix = appendix_text(a)
    if appendix:
        parts += ["<h2>For the appendix</h2>", f"<p class='appendix'>{html.escape(appendix)}</p>"]
    if figures:
        parts.append(f"<p>Figures: {html.escape(COLOURS)}.</p>")
    for fig in figures:
        data = base64.b64encode(fig.read_bytes()).decode()
        name = html.escape(fig.stem.replace("_", " "))
        parts.append(f'<h2>{name}</h2><img alt="{name}" src="data:image/png;base64,{data}">')
    parts += ["<h2>Method</h2><ul>" + "".join(f"<li>{html.escape(m)}</li>" for m in a.method + [PRECISION]) + "</ul>"]
    if a.warnings:
        parts += ["<h2>Warnings</h2><ul>" + "".join(f"<li>{html.escape(w)}</li>" for w in a.warnings) + "</ul>"]
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto}table.t{border-collapse:collapse;"
             "font-size:13px}table.t td,table.t th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}"
             "img{max-width:100%}pre{background:#f6f6f6;padding:8px}p.verdict{font-size:15px;line-height:1.5}")
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                    f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")
    return path


# --- figures: each a function of the analysis and the one colour mapping, returning a matplotlib Figure ---

def beyond_figures(a: Analysis, out: Path, colours: dict) -> list[Path]:
    """The rank intervals, the budget curves, the performance profile and the sources of variance, where computed."""
    from emoe.analysis import ranks, variance

    beyond, paths = getattr(a, "beyond", {}) or {}, []
    for key, name, draw in (("rank_intervals", "rank_intervals", ranks.rank_interval_figure),
                            ("budget", "budget_curves", ranks.budget_figure),
                            ("profile", "performance_profile", ranks.profile_figure),
                            ("variance", "sources_of_variance", variance.variance_figure)):
        frame = beyond.get(key)
        if frame is not None and len(frame):
            paths.append(_save(draw(frame, colours), out / f"{name}.png"))
    return paths

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    """Save with every artist inside the image (``bbox_inches="tight"``: long labels are never cut)."""
    fig.savefig(path, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def _grid(n: int, width: float, height: float):
    """A figure of ``n`` panels, at most three a row, in constrained layout (room kept for a legend outside), with
    at most five ticks an axis in a small font, so that no two tick labels touch."""
    from matplotlib.ticker import MaxNLocator

    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = _pyplot().subplots(rows, cols, figsize=(width * cols + 2.5, height * rows), dpi=150,
                                   squeeze=False, layout="constrained")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax in axes.flat[:n]:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
        ax.yaxis.set_major_locator(MaxNLocator(nbins=5))
        ax.tick_params(labelsize=8)
    return fig, list(axes.flat[:n])


def _arm_legend(fig, a: Analysis, colours: dict, shown, marker: str | None = None) -> None:
    """One legend for the figure, outside its panels: each arm shown, in the sweep's order, in its colour."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colours[arm], lw=2.5 if arm == a.baseline else 1.5,
                      marker=(("s" if arm == a.baseline else "o") if marker else None),
                      linestyle="" if marker else "-", label=f"{arm} (baseline)" if arm == a.baseline else str(arm))
               for arm in _arms(a) if arm in set(shown)]
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, title="arm", title_fontsize=8)


def learning_curves_figure(a: Analysis, curves: pd.DataFrame | None, colours: dict | None = None):
    """Per task, each arm's ID learning curve (mean over its chosen seeds at each optimiser step); None without
    curves."""
    if curves is None or curves.empty or a.chosen.empty or "run_id" not in a.chosen:
        return None
    colours = colours or arm_colours(_arms(a))
    merged = curves.merge(a.chosen[["run_id", "task", "arm"]], on="run_id")
    if merged.empty:
        return None
    tasks = list(dict.fromkeys(merged["task"]))
    fig, axes = _grid(len(tasks), 4.5, 3.2)
    for ax, task in zip(axes, tasks):
        sub = merged[merged["task"] == task]
        for arm, g in sub.groupby("arm", sort=False):
            mean = g.groupby("step")["value"].mean()
            ax.plot(mean.index, mean.to_numpy(), color=colours[arm], label=str(arm),
                    lw=1.5 if arm != a.baseline else 2.5)
        ax.set_title(str(task), fontsize=9)
        ax.grid(alpha=0.3)
    fig.supxlabel("optimiser step", fontsize=9)
    fig.supylabel("ID score (mean over seeds)", fontsize=9)
    _arm_legend(fig, a, colours, merged["arm"])
    return fig


def learning_curves(a: Analysis, curves: pd.DataFrame | None, path: Path, colours: dict | None = None) -> Path | None:
    fig = learning_curves_figure(a, curves, colours)
    return _save(fig, path) if fig is not None else None


def cd_figure(a: Analysis, colours: dict | None = None):
    """Mean ranks with the pairwise Wilcoxon-Holm cliques (autorank's and Ismail-Fawaz's ``cd-diagram``'s choice):
    a bar joins arms no pairwise test separates. Unlike Nemenyi's critical difference, no third arm moves a bar.
    Each arm in its colour, its mean rank at the report's precision; one label row per arm, so the figure grows
    with the arms and labels never overlap. None with fewer than 3 arms or no pairwise tests."""
    import scikit_posthocs as sp

    pw = a.tests.get("pairwise")
    if pw is None or len(pw) == 0 or a.ranks.empty or a.ranks.shape[1] < 3:
        return None
    colours = colours or arm_colours(_arms(a))
    arms = list(a.ranks.columns)
    p = pd.DataFrame(1.0, index=arms, columns=arms)
    for _, r in pw.iterrows():
        p.loc[r["a"], r["b"]] = p.loc[r["b"], r["a"]] = r["p_holm"]
    fig, ax = _pyplot().subplots(figsize=(8, 3), dpi=150)
    sp.critical_difference_diagram(a.ranks.mean().sort_values(), p, ax=ax, alpha=a.tests["alpha"],
                                   color_palette={arm: colours[arm] for arm in arms},
                                   label_fmt_left=f"{{label}} ({{rank:.{RANK_DIGITS}f}})",
                                   label_fmt_right=f"({{rank:.{RANK_DIGITS}f}}) {{label}}",
                                   label_props={"fontsize": 9})
    from matplotlib.ticker import MultipleLocator

    ax.xaxis.set_major_locator(MultipleLocator(1))  # ranks 1..k
    rows = max(1.0, -ax.get_ylim()[0])  # one unit per bar level and per label row, below the rank axis
    fig.set_size_inches(8, 1.3 + 0.28 * rows)
    ax.set_title(f"Mean rank on {a.metric} over {a.tests['blocks']} blocks (1 = best)\nbars join arms that no "
                 f"pairwise Wilcoxon-Holm test (alpha {_p(a.tests['alpha'])}) separates", fontsize=9)
    return fig


def cd_diagram(a: Analysis, path: Path, colours: dict | None = None) -> Path | None:
    fig = cd_figure(a, colours)
    return _save(fig, path) if fig is not None else None


def id_vs_ood_figure(a: Analysis, colours: dict | None = None):
    """Per task, each arm's mean ID score against its mean OOD score, ± std over seeds; the arms named in one legend
    outside the panels (no label near a point, so none can overlap another); None without both scores."""
    idm, oodm = f"{tracking.ID_SCORE}_mean", f"{tracking.OOD_SCORE}_mean"
    t = a.table.dropna(subset=[idm, oodm]) if {idm, oodm} <= set(a.table.columns) else a.table.iloc[0:0]
    if t.empty:
        return None
    colours = colours or arm_colours(_arms(a))
    tasks = list(dict.fromkeys(t["task"]))
    fig, axes = _grid(len(tasks), 4.2, 3.6)
    for ax, task in zip(axes, tasks):
        for _, r in t[t["task"] == task].iterrows():
            base = r["arm"] == a.baseline
            ax.errorbar(r[idm], r[oodm], xerr=_column(t, f"{tracking.ID_SCORE}_std")[r.name],
                        yerr=_column(t, f"{tracking.OOD_SCORE}_std")[r.name], fmt="s" if base else "o",
                        ms=7 if base else 5, color=colours[r["arm"]], capsize=3, label=str(r["arm"]))
        ax.set_title(str(task), fontsize=9)
        ax.grid(alpha=0.3)
    fig.supxlabel("ID score (the task's GLUE metric; mean ± std over seeds)", fontsize=9)
    fig.supylabel("OOD score (mean over OOD sets, ± std over seeds)", fontsize=9)
    fig.suptitle(f"ID vs OOD per arm (square: the baseline, {a.baseline or 'none'})", fontsize=10)
    _arm_legend(fig, a, colours, t["arm"], marker="o")
    return fig


def id_vs_ood(a: Analysis, path: Path, colours: dict | None = None) -> Path | None:
    fig = id_vs_ood_figure(a, colours)
    return _save(fig, path) if fig is not None else None
