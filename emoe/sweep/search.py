"""How a sweep searches: the grid (Tune's ``grid_search``), arm-balanced Optuna, and ASHA early stopping per arm and
seed and task (or per task). Early stopping and Optuna read ``id_score`` only: OOD metrics never steer the search."""

from __future__ import annotations

import pickle
from typing import Any

from ray.tune.schedulers import FIFOScheduler
from ray.tune.search import Searcher

from emoe.sweep.plan import Plan
from emoe.tracking import schema


def search_space(plan: Plan) -> tuple[dict[str, Any], Searcher | None, int]:
    """Tune's ``param_space``, search algorithm and ``num_samples`` for the plan's search."""
    from ray import tune

    if plan.settings.search == "optuna":
        searcher = ArmBalancedOptuna(list(plan.design.arms), plan.seeds, plan.lr_range, plan.samples_per_arm,
                                     tasks=plan.tasks, knobs=plan.design.arms)
        return dict(plan.base), searcher, plan.n_trials
    space = {**plan.base, "task": tune.grid_search(plan.tasks), "arm": tune.grid_search(list(plan.design.arms)),
             "seed": tune.grid_search(plan.seeds), "learning_rate": tune.grid_search(plan.learning_rates)}
    return space, None, 1


def scheduler(plan: Plan, history: list | None = None):
    """ASHA on ``id_score`` with time in epochs (per arm, seed and task, or per task), or None. Each task's brackets
    run to its own epochs (``--epochs``, or the task's cap); ``history`` (``emoe.sweep.runner.history``) is what
    the sweep's cells reported before this run, replayed into the brackets."""
    s = plan.settings
    if s.scheduler == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    def make(task: str):
        if plan.base["max_steps"]:  # trials that train by steps: time in steps, grace (--grace-period) too
            steps = plan.base["max_steps"]
            return ASHAScheduler(time_attr=schema.STEP, max_t=steps, grace_period=s.grace_period or steps / 2,
                                 reduction_factor=s.reduction_factor)
        epochs = plan.epochs(task)
        # NOTE: default grace half the epochs: on the three-rate per-epoch benchmark (benchmarks/early_stopping.py)
        # a quarter stopped rates that led at the end (a rate's chosen value changed); half kept every conclusion.
        return ASHAScheduler(time_attr=schema.EPOCH, max_t=epochs, grace_period=s.grace_period or epochs / 2,
                             reduction_factor=s.reduction_factor)

    if s.early_stop_scope == "global":
        return PerArmScheduler(make, lambda config: (config.get("task"),), history=history)
    return PerArmScheduler(make, history=history)


def _bracket(config) -> tuple:
    return config.get("arm"), config.get("seed"), config.get("task")


class _Cell:
    """A trial as ASHA sees it: its config, and its cell (task, arm, seed, learning rate) as its id."""

    __slots__ = ("config", "trial_id")

    def __init__(self, config: dict[str, Any]):
        self.config = config
        self.trial_id = "/".join(str(config.get(k)) for k in ("task", "arm", "seed", "learning_rate"))


class PerArmScheduler(FIFOScheduler):
    """ASHA run separately within each (arm, seed, task): a trial is compared only with the other learning rates of
    its own arm, seed and task, so no arm is eliminated because another learns faster early, and no task's scores
    (different metrics, different scales) are compared with another's. ``key`` may group more widely (``global``
    scope: one bracket per task).

    NOTE: seeds get brackets of their own because stopping a seed for trailing its sibling seeds of the same
    configuration would keep only the lucky replicates of that configuration, biasing its mean upwards.
    """

    def __init__(self, make_scheduler, key=_bracket, history: list[tuple[dict, list[dict], bool]] | None = None):
        super().__init__()
        self._make, self._key = make_scheduler, key
        self._arms: dict[tuple, Any] = {}
        self._metric = self._mode = None
        self._history = list(history or [])

    def set_search_properties(self, metric, mode, **spec) -> bool:
        self._metric, self._mode = metric, mode
        ok = all(s.set_search_properties(metric, mode, **spec) for s in self._arms.values())
        self._replay()
        return ok

    def _replay(self) -> None:
        """Feed the brackets what the cells' records say happened before this run (``history``: each started
        cell's config, its reports, whether it ended), as Tune fed them then: a resumed sweep's rungs hold every
        earlier result, and a cut-off cell that passed a rung keeps the decision made there."""
        for config, reports, ended in self._history:
            trial = _Cell(config)
            self.on_trial_add(None, trial)
            for report in reports:
                self.on_trial_result(None, trial, report)
            if ended and reports:
                self.on_trial_complete(None, trial, reports[-1])
        self._history = []

    def _for(self, trial):
        key = self._key(trial.config)
        if key not in self._arms:
            self._arms[key] = self._make(trial.config.get("task"))
            self._arms[key].set_search_properties(self._metric, self._mode)
        return self._arms[key]

    # NOTE: ASHA knows a trial by its id; it is given the trial's cell instead (``_Cell``), so that a cell started
    # again after an interruption (a new Tune trial) is the trial the replayed rungs already hold.
    def on_trial_add(self, tune_controller, trial):
        self._for(trial).on_trial_add(tune_controller, _Cell(trial.config))

    def on_trial_result(self, tune_controller, trial, result):
        return self._for(trial).on_trial_result(tune_controller, _Cell(trial.config), result)

    def on_trial_complete(self, tune_controller, trial, result):
        self._for(trial).on_trial_complete(tune_controller, _Cell(trial.config), result)

    def on_trial_remove(self, tune_controller, trial):
        self._for(trial).on_trial_remove(tune_controller, _Cell(trial.config))

    def debug_string(self) -> str:
        return "ASHA per bracket: " + ", ".join(f"{'/'.join(map(str, key))}: {s.debug_string()}"
                                                for key, s in self._arms.items())


class PickledState:
    """Tune saves and restores a searcher through these (its experiment state, and Tuner.restore on --resume)."""

    def save(self, checkpoint_path: str):
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str):
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


class CellList(PickledState, Searcher):
    """Exactly the given cells (flat ``task, arm, seed, learning_rate`` dicts), one trial each, in order: the cells
    that an extension (``--extend``) of a sweep still lacks. Its position is saved with Tune's experiment state."""

    def __init__(self, cells: list[dict[str, Any]], metric: str = schema.ID_SCORE, mode: str = "max"):
        super().__init__(metric=metric, mode=mode)
        self.cells, self.next = [dict(c) for c in cells], 0

    def suggest(self, trial_id: str):
        if self.next >= len(self.cells):
            return Searcher.FINISHED
        self.next += 1
        return dict(self.cells[self.next - 1])

    def on_trial_complete(self, trial_id, result=None, error=False):
        pass


class ArmBalancedOptuna(PickledState, Searcher):
    """One Optuna study per arm and task over a log-uniform learning rate (the learning rate is chosen per task);
    (arm, task) pairs take turns, so every one gets exactly ``samples_per_arm`` trials (an equal tuning budget).

    Each study sits behind Ray's ``Repeater``: a suggested learning rate runs on the seeds in turn (the i-th trial
    of a study uses ``seeds[i % len(seeds)]``) and the study learns from the mean ``id_score`` over them. The whole
    state (counts, studies, groups) is saved with Tune's experiment state, so ``--resume`` neither repeats nor
    exceeds a budget.
    """

    def __init__(self, arms: list[str], seeds: list[int], lr_range: tuple[float, float], samples_per_arm: int,
                 metric: str = schema.ID_SCORE, mode: str = "max", seed: int = 0, tasks: list[str] | None = None,
                 knobs: dict[str, dict[str, Any]] | None = None):
        super().__init__(metric=metric, mode=mode)
        from ray import tune
        from ray.tune.search import Repeater
        from ray.tune.search.optuna import OptunaSearch

        self.seeds, self.quota = list(seeds), samples_per_arm
        self.knobs = dict(knobs or {})  # each arm's knobs, in its suggestions: Tune's config is the trial's
        self.tasks = list(tasks or [None])
        self.arms = [(a, t) for t in self.tasks for a in arms]  # study keys, in turn order
        space = {"learning_rate": tune.loguniform(*lr_range)}
        self.studies = {key: Repeater(OptunaSearch(space, metric=metric, mode=mode, seed=seed + i),
                                      repeat=len(self.seeds)) for i, key in enumerate(self.arms)}
        self.count = dict.fromkeys(self.arms, 0)
        self.owner: dict[str, tuple] = {}

    def suggest(self, trial_id: str):
        from ray.tune.search.repeater import TRIAL_INDEX

        open_arms = [a for a in self.arms if self.count[a] < self.quota]
        if not open_arms:
            return Searcher.FINISHED
        arm = min(open_arms, key=lambda a: (self.count[a], self.arms.index(a)))
        suggestion = self.studies[arm].suggest(trial_id)
        if suggestion is None or suggestion == Searcher.FINISHED:
            return None
        self.count[arm] += 1
        self.owner[trial_id] = arm
        seed = self.seeds[suggestion.pop(TRIAL_INDEX)]
        name, task = arm
        return {**suggestion, **getattr(self, "knobs", {}).get(name, {}), "arm": name, "seed": seed,
                **({"task": task} if task is not None else {})}

    def on_trial_result(self, trial_id, result):
        if trial_id in self.owner:
            self.studies[self.owner[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id, result=None, error=False):
        if trial_id in self.owner:
            self.studies[self.owner.pop(trial_id)].on_trial_complete(trial_id, result, error=error)

