"""Tables and figures of an ``Analysis``: console text, CSV, Markdown, LaTeX (booktabs), CD diagram, ID-vs-OOD."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from emoe.analysis.stats import BLOCK_NAMES, Analysis
from emoe.tracking import schema as tracking


def _pm(mean, std, digits=4) -> str:
    """mean ± std over seeds; a single seed has no spread: its value and "(1 seed)"."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.{digits}f} (1 seed)"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def display_table(a: Analysis) -> pd.DataFrame:
    """The per-arm table as people read it: mean ± std strings, the rank, the selection and the counts."""
    t = a.table
    sets = [tracking.ood_score_set(c[:-len("_mean")]) for c in t.columns
            if tracking.ood_score_set(c) and c.endswith("_mean")]
    out = pd.DataFrame({"task": t["task"], "arm": t["arm"]})
    idm, ids = f"{tracking.ID_SCORE}_mean", f"{tracking.ID_SCORE}_std"
    out["ID score"] = [_pm(m, s) for m, s in zip(t.get(idm, []), t.get(ids, []))]
    for s in sets:
        col = tracking.ood_score_metric(s)
        out[f"OOD {s}"] = [_pm(m, d) for m, d in zip(t[f"{col}_mean"], t[f"{col}_std"])]
    if f"{tracking.OOD_SCORE}_mean" in t:
        out["OOD mean"] = [_pm(m, s) for m, s in zip(t[f"{tracking.OOD_SCORE}_mean"], t[f"{tracking.OOD_SCORE}_std"])]
    out[f"rank ({a.metric})"] = [f"{r:.2f}" if not math.isnan(r) else "n/a" for r in t.get("rank", [math.nan] * len(t))]
    out["lr"] = [f"{x:g}" if isinstance(x, float) and not math.isnan(x) else "n/a"
                 for x in t.get("learning_rate", [math.nan] * len(t))]
    out["seeds"] = t.get("seeds", "")
    out["failed"] = t["failed"]
    out["early stopped"] = t["early_stopped"]
    return out


def _points(a: Analysis, x: float) -> str:
    """A difference in the metric's units, and in score points (x 100) for a score in [0, 1]."""
    score = a.metric.startswith((tracking.ID_SCORE, "id.", tracking.OOD_SCORE, "ood."))
    return f"{x:+.4f} ({100 * x:+.2f} points)" if score else f"{x:+.4f}"


def status_lines(a: Analysis) -> list[str]:
    """What the report leads with: whether this is the sweep's declared primary analysis, and the looks."""
    s = a.status or {"primary": False, "why": ["no primary analysis was declared"], "looks": 1, "planned_looks": 1,
                     "family_alpha": a.tests.get("alpha", 0.05)}
    what = (f"{a.metric} over blocks = {a.blocks}, every arm against {a.baseline or 'n/a'}, alpha "
            f"{a.tests.get('alpha', 0.05):g}")
    if s["primary"]:
        spent = (f"; look {s['looks']} of {s['planned_looks']} planned: the family is tested at alpha / "
                 f"{s['planned_looks']} = {s['family_alpha']:.4g} (alpha spent over the looks)"
                 if s["planned_looks"] > 1 else f"; look {s['looks']} of 1 planned")
        return [f"PRIMARY ANALYSIS (declared when the sweep was launched): {what}{spent}. Everything after the "
                "primary family is exploratory."]
    return [f"EXPLORATORY ANALYSIS ({what}): " + "; ".join(s["why"]) + ". No p-value below is confirmatory."]


def tests_text(a: Analysis) -> list[str]:
    t = a.tests
    alpha = t.get("alpha", 0.05)
    fam = t.get("family_alpha", alpha)
    lines = status_lines(a) + [f"blocks: {t.get('blocks', 0)} ({BLOCK_NAMES[a.blocks]}), arms: {t.get('arms', 0)}"]
    c = a.comparisons
    if "wilcoxon" in t and len(t["wilcoxon"]):
        level = t.get("level", 1 - fam)
        lines.append(f"{'Primary family' if a.status.get('primary') else 'Family'}: each arm against {a.baseline} "
                     f"(difference in {a.metric}, positive = better), Wilcoxon signed-rank (zeros split between the "
                     f"signs, exact p), Holm at alpha {fam:.4g}; {100 * level:.4g}% t-intervals (simultaneous "
                     f"{100 * (1 - fam):.4g}% over the family):")
        comp = c.set_index("arm") if len(c) else pd.DataFrame()
        for _, r in t["wilcoxon"].iterrows():
            sig = "significant" if r["significant"] else "not significant"
            lines.append(f"  {r['arm']}: W = {r['W']:.4g}, p = {r['p']:.4g}, p_holm = {r['p_holm']:.4g} ({sig}); "
                         f"zero differences {int(r['zeros'])}; rank-biserial r = {r['rank_biserial']:.2f}")
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
                    lines.append(f"    {name}: [{lo:+.4f}, {hi:+.4f}]" if not pd.isna(lo) else
                                 f"    {name}: no interval ({_why(x.get('why_not'), name)})")
            d, sd = x.get("detectable"), x.get("sd_blocks")
            what = ("none: too few blocks for any difference to be significant" if d == math.inf else
                    "not estimable (fewer than 2 blocks, or no spread)" if pd.isna(d) else
                    f"{abs(d):.4f} ({100 * abs(d):.2f} points; SD of the differences over blocks {sd:.4f})")
            lines.append(f"    power: smallest mean difference detected 80% of the time at Holm's hardest threshold "
                         f"(alpha / {len(t['wilcoxon'])}): {what}")
    s = a.selection
    if len(s):
        epochs = bool(s["epochs"].any()) if "epochs" in s else False
        what = "the rate and the best evaluation" if epochs else "the rate"
        chose = s[(s["rates"] > 1) | s.get("epochs", False)]
        if len(chose):
            worst = chose.iloc[int(np.argmax(chose["inflation"].to_numpy()))]
            lines.append(f"Selection: the ID score is the selection criterion (the best learning rate and evaluation "
                         f"on the same ID split). Choosing {what} inflates it by {chose['inflation'].mean():+.4f} "
                         f"on average (largest {worst['inflation']:+.4f}, {worst['arm']} on {worst['task']}): the "
                         "selected score minus each seed's score where the choice made on the other seeds lands."
                         + ("" if epochs else " The best-evaluation choice within a trial is not undone.")
                         + " OOD scores are never selected on.")
        else:
            lines.append("Selection: one learning rate per arm, so none was chosen on ID; the best evaluation within "
                         "each trial is chosen on the same split when --keep-best is on (not undone here).")
    lines.append(f"Exploratory (not part of the primary family; alpha {alpha:g}, no correction across analyses):")
    if "friedman" in t:
        f, i = t["friedman"], t["iman_davenport"]
        sig = "significant" if f.get("significant") else "not significant"
        lines.append(f"  Friedman chi2({f['df']}) = {f['chi2']:.4f}, p = {f['p']:.4g} (asymptotic), "
                     f"p = {f['p_permutation']:.4g} ({f['permutation']} permutation; {sig})")
        lines.append(f"  Iman-Davenport F({i['df1']}, {i['df2']}) = {i['F']:.4f}, p = {i['p']:.4g}" if math.isfinite(i["F"])
                     else "  Iman-Davenport F: undefined (every block ranks the arms alike)")
        lines.append(f"  Nemenyi critical difference (alpha = {alpha:g}): {t['nemenyi_cd']:.4f} (the largest "
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
            size = f"mean difference {abs(r['diff']):.4f}" if not pd.isna(r["diff"]) else "a failed cell"
            lines.append(f"    {better} > {worse}: {size}, p = {r['p']:.4g}, p_holm = {r['p_holm']:.4g}, "
                         f"rank-biserial r = {abs(r['rank_biserial']):.2f}")
    if len(c) and "p_better" in c:
        for _, r in c.dropna(subset=["p_better"]).iterrows():
            lines.append(f"  Bayesian signed-rank {r['arm']} vs {a.baseline}: P(better) = {r['p_better']:.3f}, "
                         f"P(equivalent) = {r['p_rope']:.3f}, P(worse) = {r['p_worse']:.3f}")
    return lines


def _why(text, name: str) -> str:
    for part in str(text or "").split("; "):
        if part.startswith(name):
            return part.split(": ", 1)[-1]
    return str(text or "not estimable")


def paper_display(a: Analysis) -> pd.DataFrame:
    """The paper's table (per arm, over tasks) as people read it; empty for a one-task analysis."""
    s = a.summary
    if s.empty or s["tasks"].max() < 2:
        return pd.DataFrame()

    def num(x, digits=4):
        return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"

    failed = s["failed"] if "failed" in s else [""] * len(s)
    return pd.DataFrame({"arm": s["arm"], "tasks": s["tasks"].astype(int),
                         "avg ID score": [num(x) if not f else "failed" for x, f in zip(s["id_score"], failed)],
                         "avg OOD score": [num(x) if not f else "failed" for x, f in zip(s["ood_score"], failed)],
                         "GLUE-X OOD rank": [num(x, 2) for x in s["ood_rank"]],
                         "ID rank": [num(x, 2) for x in s["id_rank"]],
                         "failed on": [f or "" for f in failed]})


def console(a: Analysis) -> str:
    parts = ["Method:"] + [f"  - {m}" for m in a.method]
    paper = paper_display(a)
    if not paper.empty:
        parts += ["", "Over tasks (average scores over the same tasks; Friedman ranks over tasks, 1 = best; a failed "
                  "cell ranks last and leaves its arm without an average):", paper.to_string(index=False)]
    parts += ["", "Per task:" if not paper.empty else "", display_table(a).to_string(index=False), ""] + tests_text(a)
    if a.warnings:
        parts += ["", "Warnings:"] + [f"  ! {w}" for w in a.warnings]
    return "\n".join(parts)


def write_files(a: Analysis, out: Path, title: str, curves: pd.DataFrame | None = None) -> list[Path]:
    """CSV (numbers), Markdown and LaTeX (booktabs) tables, a CD diagram, an ID-vs-OOD chart, learning curves (given
    ``curves``, ``emoe.analysis.results.load_curves`` of the chosen trials) and one self-contained HTML report."""
    out.mkdir(parents=True, exist_ok=True)
    shown = display_table(a)
    paths = [out / "table.csv", out / "table.md", out / "table.tex", out / "tests.txt"]
    a.table.to_csv(paths[0], index=False)
    paper = paper_display(a)
    md = [f"# {title}", ""]
    if not paper.empty:
        md += ["## Over tasks", "", paper.to_markdown(index=False), "", "## Per task", ""]
        a.summary.to_csv(out / "summary.csv", index=False)
        paths.append(out / "summary.csv")
    md += [shown.to_markdown(index=False), "", "## Tests", ""] + [f"    {l}" for l in tests_text(a)]
    md += ["", "## Method", ""] + [f"- {m}" for m in a.method]
    if a.warnings:
        md += ["", "## Warnings", ""] + [f"- {w}" for w in a.warnings]
    paths[1].write_text("\n".join(md) + "\n")
    paths[2].write_text(shown.style.hide(axis="index").to_latex(hrules=True, column_format="l" * shown.shape[1])
                        .replace("±", r"$\pm$"))
    paths[3].write_text("\n".join(tests_text(a) + [""] + a.method + [""] + a.warnings) + "\n")
    figures = [p for p in (cd_diagram(a, out / "cd_diagram.png"), id_vs_ood(a, out / "id_vs_ood.png"),
                           learning_curves(a, curves, out / "learning_curves.png")) if p]
    paths += figures
    paths.append(write_html(a, out / "report.html", title, figures))
    return paths


def write_html(a: Analysis, path: Path, title: str, figures: list[Path]) -> Path:
    """One self-contained HTML file (figures embedded): the tables, tests, comparisons, method and warnings. The
    MLflow UI slows down past a few hundred runs; this opens anywhere."""
    import base64
    import html

    def table(df: pd.DataFrame) -> str:
        return df.to_html(index=False, border=0, classes="t", na_rep="n/a", float_format=lambda x: f"{x:.4g}")

    parts = [f"<h1>{html.escape(title)}</h1>"]
    paper = paper_display(a)
    if not paper.empty:
        parts += ["<h2>Over tasks</h2>", "<p>Average scores over tasks; Friedman ranks over tasks, 1 = best.</p>",
                  table(paper)]
    parts += ["<h2>Per task</h2>", table(display_table(a)), "<h2>Tests</h2>",
              "<pre>" + html.escape("\n".join(tests_text(a))) + "</pre>"]
    if len(a.comparisons):
        parts += [f"<h2>Against {html.escape(str(a.baseline))}</h2>", table(a.comparisons)]
    for fig in figures:
        data = base64.b64encode(fig.read_bytes()).decode()
        parts.append(f'<h2>{html.escape(fig.stem.replace("_", " "))}</h2><img src="data:image/png;base64,{data}">')
    parts += ["<h2>Method</h2><ul>" + "".join(f"<li>{html.escape(m)}</li>" for m in a.method) + "</ul>"]
    if a.warnings:
        parts += ["<h2>Warnings</h2><ul>" + "".join(f"<li>{html.escape(w)}</li>" for w in a.warnings) + "</ul>"]
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto}table.t{border-collapse:collapse;"
             "font-size:13px}table.t td,table.t th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}"
             "img{max-width:100%}pre{background:#f6f6f6;padding:8px}")
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                    f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")
    return path


def learning_curves(a: Analysis, curves: pd.DataFrame | None, path: Path) -> Path | None:
    """Per task, each arm's ID learning curve (mean over its chosen seeds at each optimiser step)."""
    if curves is None or curves.empty or a.chosen.empty or "run_id" not in a.chosen:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    merged = curves.merge(a.chosen[["run_id", "task", "arm"]], on="run_id")
    tasks = list(dict.fromkeys(merged["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.5), dpi=120, squeeze=False)
    for ax, task in zip(axes[0], tasks):
        sub = merged[merged["task"] == task]
        for arm, g in sub.groupby("arm", sort=False):
            mean = g.groupby("step")["value"].mean()
            ax.plot(mean.index, mean.to_numpy(), label=str(arm), lw=1.5 if arm != a.baseline else 2.5)
        ax.set_title(f"{task}: ID score (mean over seeds)", fontsize=9)
        ax.set_xlabel("optimiser step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def cd_diagram(a: Analysis, path: Path) -> Path | None:
    """Mean ranks with the pairwise Wilcoxon-Holm cliques (autorank's and Ismail-Fawaz's ``cd-diagram``'s choice):
    a bar joins arms no pairwise test separates. Unlike Nemenyi's critical difference, no third arm moves a bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scikit_posthocs as sp

    pw = a.tests.get("pairwise")
    if pw is None or len(pw) == 0 or a.ranks.empty or a.ranks.shape[1] < 3:
        return None
    arms = list(a.ranks.columns)
    p = pd.DataFrame(1.0, index=arms, columns=arms)
    for _, r in pw.iterrows():
        p.loc[r["a"], r["b"]] = p.loc[r["b"], r["a"]] = r["p_holm"]
    fig, ax = plt.subplots(figsize=(8, 2.8), dpi=150)
    sp.critical_difference_diagram(a.ranks.mean().sort_values(), p, ax=ax, alpha=a.tests["alpha"])
    ax.set_title(f"Mean rank on {a.metric} over {a.tests['blocks']} blocks (1 = best); bars join arms that no "
                 f"pairwise Wilcoxon-Holm test (alpha {a.tests['alpha']:g}) separates", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def id_vs_ood(a: Analysis, path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idm, oodm = f"{tracking.ID_SCORE}_mean", f"{tracking.OOD_SCORE}_mean"
    t = a.table.dropna(subset=[idm, oodm]) if oodm in a.table else a.table.iloc[0:0]
    if t.empty:
        return None
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=150)
    for _, r in t.iterrows():
        base = r["arm"] == a.baseline
        ax.errorbar(r[idm], r[oodm], xerr=r[f"{tracking.ID_SCORE}_std"], yerr=r[f"{tracking.OOD_SCORE}_std"],
                    fmt="s" if base else "o", color="black" if base else None, capsize=3)
        ax.annotate(f"{r['arm']}" + (f" ({r['task']})" if t["task"].nunique() > 1 else ""),
                    (r[idm], r[oodm]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel("ID score (the task's GLUE metric; mean ± std over seeds)")
    ax.set_ylabel("OOD score (mean over OOD sets, ± std over seeds)")
    ax.set_title("ID vs OOD per arm (square: dense baseline)", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
