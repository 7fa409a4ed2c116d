"""Sources of variance: how much of a score's spread each random factor of a sweep (the trial seed, the data
seed, the clustering seed, the learning rate) accounts for, per arm.

The model (per arm, or over every trial when ``by`` is None): ``y = mu + sum_f u_f[level] + e``, one independent
normal random effect per factor (crossed, not nested: every factor's levels recur with every other's), each with
its own variance, and a residual. Fitted by REML with statsmodels' ``MixedLM`` in its documented form for crossed
effects: one group holding every trial (``groups = np.ones(n)``), no group-level random effect (``re_formula="0"``),
and one variance component per factor (``vc_formula={f: "0 + C(f)"}``). On a balanced, fully crossed design REML
gives the ANOVA (expected mean squares) estimates wherever those are non-negative.
"""

from __future__ import annotations

import itertools
import math
import warnings as pywarnings

import numpy as np
import pandas as pd

FACTORS = ("seed", "data_seed", "cluster_seed", "learning_rate")
RESIDUAL = "residual"
# REML optimisers: with few levels the likelihood is flat, and statsmodels' default (BFGS from every variance ratio
# at 1) stopped at 3.0 instead of 3.9 (a 2-level factor absorbing the rest) on a planted 8 x 2 x 8 x 4 design;
# Powell with a tight tolerance reached the ANOVA estimates on every one tried. Powell first, then BFGS polishing its
# answer (a gradient check of the same point); the others from statsmodels' start only when neither converged.
FIRST = ("powell", {"ftol": 1e-10, "maxiter": 5000})
POLISH = ("bfgs", {"gtol": 1e-9, "maxiter": 2000})
FALLBACKS = (("bfgs", {"gtol": 1e-9, "maxiter": 2000}), ("lbfgs", {"gtol": 1e-9, "maxiter": 2000}))
LIKELIHOOD_TOLERANCE = 1e-6  # a converged fit this close to the best REML log-likelihood stands for it
COLUMNS = ["source", "variance", "sd", "share", "levels", "observations"]


def crossed_design(seeds, data_seeds, cluster_seeds, learning_rates) -> list[dict]:
    """Every combination of the four factors (a full crossing), one dict per trial with keys ``FACTORS``, in
    ``itertools.product`` order (the last factor varying fastest). Each factor needs 2 or more levels for its
    variance to be estimated (``variance_components`` leaves out a factor with one)."""
    values = [list(v) for v in (seeds, data_seeds, cluster_seeds, learning_rates)]
    for name, v in zip(FACTORS, values):
        if not v:
            raise ValueError(f"{name}: no values; a crossed design needs at least one level of each factor")
        if len(set(v)) < len(v):
            raise ValueError(f"{name}: repeated values {v}; each level once")
    return [dict(zip(FACTORS, combo)) for combo in itertools.product(*values)]


def _aliased(data: pd.DataFrame, factors: list[str]) -> dict[str, str]:
    """Factors whose levels map one to one onto an earlier factor's (``cluster_seed='trial'`` re-clusters with each
    trial seed): their variances cannot be told apart. ``{later: earlier}``."""
    out: dict[str, str] = {}
    for i, f in enumerate(factors):
        for g in factors[:i]:
            if g in out:
                continue
            pairs = data[[g, f]].drop_duplicates()
            if len(pairs) == data[f].nunique() == data[g].nunique():
                out[f] = g
                break
    return out


def _fit(data: pd.DataFrame, factors: list[str]):
    """The best REML fit (``FIRST``, ``POLISH``, then ``FALLBACKS`` while none converged): the highest
    log-likelihood among converged fits within ``LIKELIHOOD_TOLERANCE`` of the best of all, as ``{source:
    variance}``; or None and the reason. ``data``: column ``y`` (standardised) and ``factors``."""
    from statsmodels.regression.mixed_linear_model import MixedLM

    safe = {f: f"f{i}" for i, f in enumerate(factors)}  # formula-safe names (a metric may hold dots)
    frame = data.rename(columns=safe)
    vc = {f: f"0 + C({safe[f]})" for f in factors}
    fits, errors = [], []

    def attempt(method: str, options: dict, start=None) -> None:
        try:
            result = model.fit(reml=True, method=method, start_params=start, **options)
        except Exception as err:  # noqa: BLE001 - a singular design must not stop the report: reported instead
            errors.append(f"{method}: {type(err).__name__}: {err}".splitlines()[0])
            return
        if np.isfinite(result.llf) and np.all(np.isfinite(result.vcomp)) and np.isfinite(result.scale):
            fits.append(result)

    def best():
        top = max(r.llf for r in fits) if fits else -math.inf
        good = [r for r in fits if r.converged and r.llf >= top - LIKELIHOOD_TOLERANCE * max(1.0, abs(top))]
        return max(good, key=lambda r: r.llf) if good else None, top

    with pywarnings.catch_warnings():
        pywarnings.simplefilter("ignore")  # convergence and boundary notes: judged here, from the fits themselves
        try:
            model = MixedLM.from_formula("y ~ 1", data=frame, groups=np.ones(len(frame)), re_formula="0",
                                         vc_formula=vc)
        except Exception as err:  # noqa: BLE001
            return None, f"the model could not be built ({type(err).__name__}: {err})".splitlines()[0]
        attempt(*FIRST)
        if fits:
            attempt(*POLISH, start=fits[0].params_object)
        for method, options in FALLBACKS if best()[0] is None else ():
            attempt(method, options)
    fit, top = best()
    if not fits:
        return None, "REML failed with every optimiser" + (f" ({'; '.join(errors)})" if errors else "")
    if fit is None:
        return None, f"REML did not converge (best log-likelihood {top:.6g} from an unconverged optimiser)"
    names = list(model.exog_vc.names)
    return {f: float(fit.vcomp[names.index(f)]) for f in factors} | {RESIDUAL: float(fit.scale)}, None


def _one(data: pd.DataFrame, response: str, factors: tuple[str, ...], label: str, warnings: list[str]) -> pd.DataFrame:
    """The components of one arm's (or every trial's) trials: one row per source (factors present with 2+ levels,
    then the residual)."""
    data = data.dropna(subset=[response])
    present = [f for f in factors if f in data.columns and data[f].nunique(dropna=True) > 1]
    incomplete = [f for f in present if data[f].isna().any()]
    if incomplete:
        warnings.append(f"{label}: {int(data[incomplete].isna().any(axis=1).sum())} trial(s) without a value of "
                        f"{', '.join(incomplete)} left out")
        data = data.dropna(subset=incomplete)
    aliased = _aliased(data, present)
    for f, g in aliased.items():
        warnings.append(f"{label}: {f} is aliased with {g} (each level of one is one level of the other): their "
                        f"variances cannot be told apart; both are in {g}'s")
    present = [f for f in present if f not in aliased]
    levels = {f: int(data[f].nunique()) for f in present} | {RESIDUAL: len(data)}
    sources = present + [RESIDUAL]

    def table(variances: dict | None) -> pd.DataFrame:
        var = pd.Series({s: (variances or {}).get(s, math.nan) for s in sources}, dtype=float)
        total = var.sum() if variances else math.nan
        return pd.DataFrame({"source": sources, "variance": var.to_numpy(), "sd": np.sqrt(var.to_numpy()),
                             "share": (var / total).to_numpy() if total > 0 else np.full(len(sources), math.nan),
                             "levels": [levels[s] for s in sources], "observations": len(data)}, columns=COLUMNS)

    y = data[response].to_numpy(float)
    if len(y) < 2:
        warnings.append(f"{label}: {len(y)} trial(s) with {response}: no variance to split (NaN row)")
        return table(None)
    spread = float(np.std(y, ddof=1))
    if not spread > 0:
        warnings.append(f"{label}: {response} is the same in all {len(y)} trials: no variance to split (NaN row)")
        return table(None)
    if not present:
        return table({RESIDUAL: spread ** 2})  # REML of the intercept-only model: the sample variance
    dummies = np.column_stack([np.ones(len(y))] + [pd.get_dummies(data[f]).to_numpy(float) for f in present])
    residual_df = len(y) - np.linalg.matrix_rank(dummies)
    if residual_df < 1:
        warnings.append(f"{label}: {len(y)} trial(s) for {len(present)} factor(s) ({', '.join(present)}) leave no "
                        "residual degrees of freedom: the components cannot be separated (NaN row); run more "
                        "combinations of the factors")
        return table(None)
    frame = pd.DataFrame({"y": (y - y.mean()) / spread}, index=data.index).join(data[present])
    variances, why = _fit(frame, present)
    if variances is None:
        warnings.append(f"{label}: {why}: components not estimated (NaN row)")
        return table(None)
    out = table({s: v * spread ** 2 for s, v in variances.items()})  # back to the response's units
    zero = [f for f in present if variances[f] < 1e-8]
    if zero:
        warnings.append(f"{label}: the variance of {', '.join(zero)} estimated at 0 (the boundary: no spread beyond "
                        "what the residual explains)")
    return out


def variance_components(df: pd.DataFrame, response: str, factors: tuple[str, ...] = FACTORS,
                        by: str | tuple[str, ...] | None = "arm", warnings: list[str] | None = None) -> pd.DataFrame:
    """Per arm (``by``: a column or several, e.g. ``("task", "arm")``; None: every trial together), each factor's
    variance in ``response`` by REML (module docstring), beside the residual's.

    A factor enters where its column exists and has 2 or more levels among the arm's trials with a ``response``
    (a factor with one level has no variance to estimate and gets no row); a factor aliased with an earlier one
    (one to one levels) is left out with a warning, its variance in the earlier one's. The response is
    standardised for the fit (statsmodels' boundary and convergence checks are absolute) and the variances scaled
    back to its units. Never raises for one arm's data: an arm whose fit fails (no trial, a constant response, no
    residual degrees of freedom, no optimiser converged) gets NaN rows and a line in ``warnings``; so does a
    component estimated at the boundary (0).

    Returns:
        One row per (``by`` value and) source, factors in ``factors`` order then ``residual``: ``variance``, ``sd``,
        ``share`` (of the total: the components plus the residual), ``levels`` (of the factor; the residual's: the
        observations) and ``observations`` (trials used).

    Raises:
        ValueError: ``response`` or a ``by`` column is not a column of ``df``.
    """
    warnings = [] if warnings is None else warnings
    if response not in df.columns:
        raise ValueError(f"no column {response!r} to split the variance of; columns: {', '.join(map(str, df.columns))}")
    keys = [] if by is None else [by] if isinstance(by, str) else list(by)
    lacking = [k for k in keys if k not in df.columns]
    if lacking:
        raise ValueError(f"by {', '.join(map(repr, lacking))}: not a column; pass columns of the trials "
                         f"({', '.join(map(str, df.columns))}), or None")
    if not keys:
        return _one(df, response, tuple(factors), "all trials", warnings)
    parts = []
    for value, group in df.groupby(keys, sort=False):
        value = value if isinstance(value, tuple) else (value,)
        label = ", ".join(f"{k} {v}" for k, v in zip(keys, value))
        part = _one(group, response, tuple(factors), label, warnings)
        for i, (k, v) in enumerate(zip(keys, value)):
            part.insert(i, k, v)
        parts.append(part)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[*keys, *COLUMNS])


def sources_of_variance(trials: pd.DataFrame, metric: str, warnings: list[str] | None = None) -> pd.DataFrame | None:
    """The report's sources of variance: ``variance_components`` of ``metric`` over every used trial (completed or
    early-stopped; every learning rate, not only the chosen one), per arm, or per task and arm with several tasks,
    over the factors the trials cross: ``seed``, ``data_seed`` (the data order; None means the trial's seed),
    ``cluster_seed`` (``'trial'`` means the trial's seed) and ``learning_rate``. A data or clustering seed that is
    the trial's seed on every trial is no factor of its own (it is the seed's). None, with a line in ``warnings``,
    where fewer than two factors vary or there is no ``metric``; never raises."""
    warnings = [] if warnings is None else warnings
    if metric not in trials.columns or "arm" not in trials.columns or "seed" not in trials.columns:
        warnings.append(f"sources of variance not computed: the trials lack {metric!r}, arm or seed")
        return None
    used = trials[trials["outcome"].isin(("completed", "early_stopped"))] if "outcome" in trials else trials
    used = used[used[metric].notna()].copy()
    present = []
    for factor, means_seed in (("seed", None), ("data_seed", ("none", "nan", "")), ("cluster_seed", ("trial",)),
                               ("learning_rate", None)):
        if factor not in used:
            continue
        if means_seed is not None:
            text = used[factor].astype(str).str.strip().str.lower()
            follows = used[factor].isna() | text.isin(means_seed)
            if follows.all():
                continue  # the trial's seed on every trial: the seed's own variance
            used[factor] = pd.to_numeric(used[factor].astype(object).where(~follows, used["seed"]), errors="coerce")
        if used[factor].nunique(dropna=True) > 1:
            present.append(factor)
    if len(present) < 2:
        varied = ", ".join(present) or "none of them"
        warnings.append(f"sources of variance not computed: the trials cross fewer than two of seed, data_seed, "
                        f"cluster_seed and learning_rate (varied: {varied})")
        return None
    used["arm"] = families(used, present)
    by = ("task", "arm") if "task" in used and used["task"].nunique() > 1 else "arm"
    try:
        return variance_components(used, metric, tuple(present), by, warnings)
    except Exception as err:  # noqa: BLE001 - a summary beside the tests never stops the report
        warnings.append(f"sources of variance not computed: {type(err).__name__}: {err}".splitlines()[0])
        return None


def families(trials: pd.DataFrame, factors) -> pd.Series:
    """Each trial's arm family: the arms whose trials differ only in the variance factors (their knobs otherwise
    equal; ``emoe sweep variance``'s arms are one family) pooled under one label (``a``, ``a+b``, or ``a .. (n
    arms)``); an arm whose knobs differ from every other's is its own family."""
    from emoe import hparams

    knobs = [k for k in hparams.KNOBS if k in trials.columns and k not in (*FACTORS, *factors, "task")]
    if not knobs:
        return trials["arm"]
    key = trials[knobs].map(str).agg("|".join, axis=1)  # (map: astype(str) keeps NaN under pandas 3)
    labels = {}
    for k, arms in trials.groupby(key, sort=False)["arm"]:
        names = list(dict.fromkeys(arms.astype(str)))
        labels[k] = names[0] if len(names) == 1 else "+".join(names) if len(names) <= 3 else \
            f"{names[0]} .. {names[-1]} ({len(names)} arms)"
    return key.map(labels)


def variance_figure(table: pd.DataFrame, colours: dict | None = None):
    """Each arm's variance split as one horizontal bar of shares (stacked, 0 to 1), a segment per source in the
    table's order, the residual last; an arm without estimates shows an empty bar. ``colours``: source -> colour
    (default matplotlib's tab10 in source order; the residual grey). Returns the matplotlib Figure (Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import colormaps

    keys = [c for c in table.columns if c not in COLUMNS]  # the by columns (arm; or task and arm)
    label = table[keys].astype(str).agg(" / ".join, axis=1) if keys else pd.Series("all trials", index=table.index)
    rows = list(dict.fromkeys(label))
    sources = [s for s in dict.fromkeys(table["source"]) if s != RESIDUAL] + [RESIDUAL]  # an arm may lack a factor
    palette = colormaps["tab10"].colors
    default = {s: palette[i % 10] for i, s in enumerate(s for s in sources if s != RESIDUAL)} | {RESIDUAL: "0.75"}
    colours = default | (colours or {})
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.4), dpi=150, layout="constrained")
    left = np.zeros(len(rows))
    for source in sources:
        mine = table[table["source"] == source]
        share = mine["share"].set_axis(label[mine.index]).reindex(rows).to_numpy(float)
        share = np.nan_to_num(share)
        ax.barh(rows, share, left=left, color=colours[source], label=str(source))
        left += share
    ax.set_xlim(0, 1)
    ax.invert_yaxis()  # the first arm on top
    ax.set_xlabel("share of the variance (REML components; residual last)", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    return fig


def display(table: pd.DataFrame) -> pd.DataFrame:
    """The report's table: one row per (task,) arm, each source's share of the variance (its SD in brackets) as a
    column, residual last."""
    keys = [c for c in ("task", "arm") if c in table.columns]
    sources = list(dict.fromkeys(s for s in table["source"] if s != RESIDUAL)) + [RESIDUAL]
    rows = []
    for key, group in table.groupby(keys, sort=False):
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        by_source = group.set_index("source")
        for source in sources:
            if source in by_source.index:
                r = by_source.loc[source]
                row[source] = "n/a" if pd.isna(r["share"]) else f"{100 * r['share']:.0f}% (sd {r['sd']:.4f})"
        row["trials"] = int(group["observations"].max())
        rows.append(row)
    return pd.DataFrame(rows)
