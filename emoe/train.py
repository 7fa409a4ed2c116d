"""One trial: build a (converted or dense) model, fine-tune it on the ID task, evaluate ID and every OOD set.

``train_and_evaluate(trial_config, report)`` knows nothing of Tune or sweeps: it calls ``report(metrics)`` at each
evaluation (a scheduler may stop it there) and returns the final metrics. ``python -m emoe.train`` runs one trial
and logs it to MLflow with the schema the sweeps use.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import random
import sys
import time
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from emoe import hparams, metrics, regimes, tracking
from emoe.convert import aux_loss, convert, emoe_layers, image_size, load_model, needs_calibration, set_bypass
from emoe.data import Task, TaskData, get_task, load_task, tokenize
from emoe.vision import domain_accuracy, image_loader, load_image_task
from emoe.layer import load_entropy
from emoe.protocols import get_protocol
from emoe.usage import Parser, prog

log = logging.getLogger(__name__)

Report = Callable[[dict[str, float]], None]


def _autocast(device: torch.device, precision: str):
    if device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext(), None
    dtype = torch.float16 if precision == "fp16" or (precision == "auto" and not torch.cuda.is_bf16_supported()) \
        else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return torch.autocast("cuda", dtype=dtype), scaler


def _loader(ds, tokenizer, batch_size: int, shuffle: bool, seed: int, pad_to: int | None = None,
            multiple_of: int | None = None):
    """Batches padded to their longest example (rounded up to ``multiple_of`` tokens), or to ``pad_to`` tokens."""
    from transformers import DataCollatorWithPadding

    g = torch.Generator().manual_seed(seed)
    collate = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=multiple_of) if pad_to is None else \
        DataCollatorWithPadding(tokenizer, padding="max_length", max_length=pad_to)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=g, collate_fn=collate)


def length_order(ds) -> np.ndarray:
    """The order that sorts an evaluation set by length, so that its batches carry little padding (the metrics
    ignore order; predictions are put back in the set's order)."""
    lengths = np.fromiter((len(x) for x in ds["input_ids"]), dtype=np.int64, count=len(ds))
    return np.argsort(lengths, kind="stable")


def compact(pred: np.ndarray, regression: bool) -> np.ndarray:
    """Predictions stored small: class ids as int8 (int16 past 127 classes), regression scores as float32."""
    if regression:
        return pred.astype(np.float32)
    return pred.astype(np.int8 if pred.max(initial=0) < 128 else np.int16)


@torch.no_grad()
def evaluate(model, loaders: dict[str, Any], device, autocast, task: Task,
             predictions: dict[str, np.ndarray] | None = None, ood_protocol: str = "gluex",
             chosen: dict[int, np.ndarray] | None = None) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """The task's metrics on the ``id`` loader and the OOD protocol's (``emoe.protocols``) on every other, and each
    converted layer's diagnostics over the first loader (ID): ``load_entropy``, ``active_neurons`` and ``ffn_flops``
    per block (``<name>.block<b>``). ``predictions``, when given, receives each loader's per-example predictions in
    the loader's order; ``chosen``, each block's experts per ID token (``[tokens, N]`` bool, padding left out, in
    the loader's order: the stability diagnostic's input)."""
    model.eval()
    scores, entropies = {}, {}
    layers = emoe_layers(model)
    for i, (name, loader) in enumerate(loaders.items()):
        preds, golds = [], []
        loads = {f.block: torch.zeros(f.num_experts) for f in layers if not f.bypass}
        active, tokens = {b: 0.0 for b in loads}, 0
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            labels = batch.pop("labels")
            with autocast:
                logits = model(**batch).logits
            preds.append(metrics.predictions(logits.float().cpu().numpy(), task.regression))
            golds.append(labels.cpu().numpy())
            if i == 0:
                # positions of the batch (an image's are all alike: its count weighs the batch as well)
                n = batch["input_ids"].numel() if "input_ids" in batch else len(labels)
                tokens += n
                for f in layers:
                    if f.block in loads:
                        loads[f.block] += f.last_load.cpu() * n
                        active[f.block] += f.last_active * n
                        if chosen is not None and f.last_chosen is not None:
                            keep = batch["attention_mask"].reshape(-1).bool().cpu() \
                                if "attention_mask" in batch else slice(None)
                            picked = f.last_chosen.reshape(-1, f.num_experts).cpu()[keep].numpy()
                            chosen[f.block] = picked if f.block not in chosen else \
                                np.concatenate([chosen[f.block], picked])
        names = task.metrics if name in ID_SETS or task.image else get_protocol(ood_protocol).metrics(task)
        scores[name] = metrics.compute(names, np.concatenate(preds), np.concatenate(golds))
        if name == "id" and task.image:  # DomainBed's training-domain validation: the mean of per-domain accuracies
            scores[name] = {"accuracy": domain_accuracy(np.concatenate(preds), np.concatenate(golds),
                                                        loader.dataset.domains)}
        if predictions is not None:
            predictions[name] = compact(np.concatenate(preds), task.regression)
        if i == 0:
            by_block = {f.block: f for f in layers}
            for block, load in loads.items():
                mean = active[block] / max(tokens, 1)
                entropies.update({tracking.load_entropy_metric(block): load_entropy(load),
                                  tracking.block_metric(tracking.ACTIVE_NEURONS, block): mean,
                                  tracking.block_metric(tracking.FFN_FLOPS, block): by_block[block].flops_per_token(mean)})
    model.train()
    return scores, entropies


def score_metrics(scores: dict[str, dict[str, float]], sizes: dict[str, int] | None = None,
                  ood_protocol: str = "gluex") -> dict[str, float]:
    """The schema's metrics of one evaluation: ``id_score``, ``id.<metric>``, ``dev_score`` and ``dev.<metric>``
    (with a development split), ``ood_score.<set>``,
    ``ood.<set>.<metric>`` and ``ood_score``: the OOD sets' scores aggregated as the protocol does (GLUE-X: weighted
    by ``sizes``, the rows of each set evaluated; EMoE: their plain mean; NaN without any set)."""
    out = {tracking.ID_SCORE: metrics.primary(scores["id"]),
           **{tracking.id_metric(m): v for m, v in scores["id"].items()}}
    if "oracle" in scores:  # an image task's held-out domain's out split (DomainBed's oracle validation)
        out[tracking.ORACLE_SCORE] = metrics.primary(scores["oracle"])
    if "loo" in scores:  # a pair run's validation domain (DomainBed's leave-one-domain-out selection)
        out[tracking.LOO_SCORE] = metrics.primary(scores["loo"])
    if "dev" in scores:  # the clean rule's development split (carved from the training set)
        out[tracking.DEV_SCORE] = metrics.primary(scores["dev"])
        out.update({tracking.dev_metric(m): v for m, v in scores["dev"].items()})
    ood = {name: metrics.primary(s) for name, s in scores.items() if name not in ID_SETS}
    for name, s in scores.items():
        if name not in ID_SETS:
            out[tracking.ood_score_metric(name)] = ood[name]
            out.update({tracking.ood_metric(name, m): v for m, v in s.items()})
    out[tracking.OOD_SCORE] = get_protocol(ood_protocol).aggregate(ood, sizes or {})
    return out


def ood_max_length(cfg: dict[str, Any], tokenizer, model_config=None) -> int:
    """Tokens per OOD example: ``ood_max_length``, else the OOD protocol's (GLUE-X 512, EMoE 128), at most what
    the tokenizer declares for its model (``model_max_length``) and the model's position embeddings."""
    length = cfg["ood_max_length"] or get_protocol(cfg["ood_protocol"]).max_length
    limits = [getattr(tokenizer, "model_max_length", None),
              *(getattr(model_config, key, None) for key in ("max_position_embeddings", "n_positions"))]
    return min([length, *(n for n in limits if isinstance(n, int) and 0 < n < 1_000_000)])


def evaluation_loaders(sets: dict[str, Any], tokenizer, task: Task, cfg: dict[str, Any], model_config=None):
    """A loader per evaluation set, and the function that puts per-example predictions back in each set's own order.

    The ID set (``id``) is tokenised to ``max_length`` in batches of ``eval_batch_size`` (else twice the training
    micro-batch); every other set as its OOD protocol says (``emoe.protocols``: max length, batch, padding).

    NOTE: with a capacity, a token's experts depend on the batch it shares (its T positions), so evaluation keeps the
    dataset's order, as the official code does; without one, length-sorted batches only save padding.
    """
    batch = cfg["eval_batch_size"] or 2 * (cfg["batch_size"] // cfg["grad_accum_steps"])
    protocol = get_protocol(cfg["ood_protocol"])
    capacity = cfg["capacity_factor"] is not None
    loaders, orders = {}, {}
    for name, ds in sets.items():
        if name in ID_SETS:
            length, size, pad_to = cfg["max_length"], batch, None
        else:
            length, size = ood_max_length(cfg, tokenizer, model_config), protocol.batch_size or batch
            pad_to = length if protocol.pad_to_max_length and capacity else None
        ds = tokenize(ds, tokenizer, task, length)
        orders[name] = np.arange(len(ds)) if capacity else length_order(ds)
        loaders[name] = _loader(ds.select(orders[name]), tokenizer, size, False, 0, pad_to,
                                pad_multiple(cfg) if name in ID_SETS else None)

    def in_set_order(preds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {}
        for name, p in preds.items():
            out[name] = np.empty_like(p)
            out[name][orders[name]] = p
        return out

    return loaders, in_set_order


def gpu_share() -> float:
    """The share of a GPU this process holds: Ray's assignment inside a Ray worker (fractional GPUs), else 1."""
    try:
        import ray

        if ray.is_initialized():
            return float(ray.get_runtime_context().get_assigned_resources().get("GPU", 1.0)) or 1.0
    except Exception:  # noqa: BLE001 - any Ray trouble: count the whole GPU
        pass
    return 1.0


ID_SETS = ("id", "dev", "oracle", "loo")  # scored with the task's metrics (the others with the OOD protocol's)


def is_score(metric: str) -> bool:
    """A score of an evaluation (what the clean rule's ``clean.<metric>`` copies): ID, development and OOD scores."""
    return metric in (tracking.ID_SCORE, tracking.OOD_SCORE, tracking.DEV_SCORE, tracking.BEST_STEP,
                      tracking.ORACLE_SCORE, tracking.LOO_SCORE) or \
        metric.startswith(("id.", "dev.", "ood.", tracking.OOD_SCORE + "."))


def pad_multiple(cfg: dict[str, Any]) -> int | None:
    """The official scripts pad training and ID evaluation batches to a multiple of 8 tokens under ``--use_fp16``
    (which matters with a capacity: padding counts among a batch's T positions)."""
    return 8 if cfg["precision"] == "fp16" else None


def load_trial_data(cfg: dict[str, Any]) -> TaskData:
    """The task data a trial config asks for (task, data_dir, ood, max_train_samples, max_eval_samples); an image
    task's (``emoe.vision``) at the model's image size, split with the trial's seed (DomainBed's trial seed)."""
    task = get_task(cfg["task"])
    if task.image:
        return load_image_task(task, cfg["data_dir"], cfg["seed"], image_size(cfg["model"]), cfg["max_train_samples"],
                               cfg["max_eval_samples"], cfg["data_augmentation"])
    return load_task(cfg["task"], cfg["data_dir"], cfg.get("ood"), cfg["max_train_samples"], cfg["max_eval_samples"],
                     cfg.get("ood_sets"), cfg["ood_protocol"], cfg.get("dev_samples"), cfg.get("dev_seed", 0))


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train_and_evaluate(trial_config: dict[str, Any], report: Report | None = None,
                       data: TaskData | None = None, on_model: Callable | None = None,
                       on_predictions: Callable[[dict[str, np.ndarray]], None] | None = None,
                       on_state: Callable[[dict[str, Any]], None] | None = None,
                       resume: dict[str, Any] | None = None,
                       on_kept_model: Callable[[nn.Module, dict[str, torch.Tensor]], None] | None = None
                       ) -> dict[str, float]:
    """Fine-tune and evaluate one trial.

    Args:
        trial_config: flat config (see ``emoe.hparams.KNOBS``); missing keys take their defaults.
        report: called with the metrics at each evaluation (``train_loss``, ``id_score``, ``id.<metric>``,
            ``ood_score.<set>``, ``ood.<set>.<metric>``, ``ood_score``, ``epoch``, ``step``,
            ``load_entropy.block<b>``; see ``score_metrics``). With ``keep_best`` the ID, OOD and load metrics are
            those of the best ID evaluation so far (every OOD score measured on that same model state, at that
            evaluation), beside ``best_step`` and the latest evaluation's ``current_id_score``.
        data: an already loaded task (else loaded from ``task``/``data_dir``).
        on_model: called with the converted model before training (e.g. to save its partitions).
        on_predictions: called at every evaluation, before ``report``, with the per-example predictions behind
            that report (with ``keep_best``: the kept evaluation's), one array per evaluation set (``id`` and each
            OOD set) in the set's order, so that paired tests between arms need no rerun; the last call is the
            final evaluation's, and a trial a scheduler stops keeps those of the report it was stopped on.
        on_state: called at every evaluation, just before ``report``, with the whole training state (model,
            optimiser, scheduler, scaler, RNG states, data position, best-so-far state): a checkpoint. It must be
            serialised before the call returns (its tensors are the live ones).
        resume: a state ``on_state`` gave: training continues from it (the next optimiser step after it), and ends
            with the metrics an uninterrupted run would have reached (on CPU, exactly).
        on_kept_model: with ``keep_model='best'``, called at each evaluation that improves the best ID score,
            before its report, with the model and the state dict of that evaluation (float16 copies of the floating
            tensors), e.g. ``emoe.convert.save_converted``: the last call holds the best evaluation's weights, and a
            trial that a scheduler stops keeps its best so far.

    Returns:
        The metrics of the last report (with ``keep_best``: those of the best ID evaluation). A trial stopped by
        ``patience`` carries ``patience_stop = 1``: it ended by the protocol, not cut short.

    Raises:
        FloatingPointError: the training loss became NaN or infinite.
    """
    trial = Trial(hparams.trial_config(trial_config), data,
                  Hooks(report, on_model, on_predictions, on_state, on_kept_model))
    return trial.run(resume)


def expert_stability(before: np.ndarray, after: np.ndarray) -> float:
    """Mean over the tokens of the Jaccard index of their expert sets at two evaluations (``[tokens, N]`` bool):
    1 when every token keeps its experts."""
    union = (before | after).sum(1)
    inter = (before & after).sum(1)
    return float(np.mean(np.where(union > 0, inter / np.maximum(union, 1), 1.0)))


def calibration_batches(train, tokenizer, task: Task, cfg: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
    """The calibration set of the data-driven constructions and controls (``emoe.calibration``):
    ``calibration_samples`` examples of the training data (a fixed random subset, seed 0, the same for every trial
    of the task), tokenised to ``max_length``, in batches of 32, with their labels (the gradient split's loss)."""
    n = min(cfg["calibration_samples"], len(train))
    subset = train.select(np.random.default_rng(0).permutation(len(train))[:n])
    if task.image:
        return [dict(batch) for batch in image_loader(subset.evaluation(), 32, False, 0)]
    ds = tokenize(subset, tokenizer, task, cfg["max_length"])
    return [dict(batch) for batch in _loader(ds, tokenizer, 32, False, 0)]


def prepare_model(model: nn.Module, cfg: dict[str, Any], calibration: list | None = None) -> nn.Module:
    """A loaded model made into the trial's, in the official order: converted (``method``; ``calibration``: the
    batches a data-driven construction or control reads), set up to train under ``regime`` (for LoRA, wrapped by
    peft: the official scripts convert after wrapping, and the regime reproduces their trainable set), then
    perturbed by NoisyTune (``noise_tuning``). Returns the model to train."""
    convert(model, hparams.emoe_config(cfg), calibration=calibration)
    model = regimes.apply_regime(model, cfg["regime"], cfg["lora_r"], cfg["layers"])
    if cfg["noise_tuning"]:
        regimes.add_noise(model, cfg["noise_tuning"], cfg["seed"], exclude_head=cfg["regime"] == "full")
    return model


def make_optimizer(model: nn.Module, cfg: dict[str, Any], total_steps: int):
    """AdamW (or DomainBed's Adam, ``optimizer``) over the regime's parameter groups
    (``emoe.regimes.parameter_groups``: the LoRA script's tenth for the body) and the linear schedule with warm-up
    over ``total_steps`` (or a constant rate, ``lr_schedule``)."""
    from transformers import get_constant_schedule, get_linear_schedule_with_warmup

    ratio = cfg["body_lr_ratio"] or regimes.OFFICIAL_BODY_LR_RATIO[cfg["regime"]]
    adamw = cfg["optimizer"] == "adamw"  # DomainBed's Adam decays every parameter (an L2 term)
    optimizer = (torch.optim.AdamW if adamw else torch.optim.Adam)(
        regimes.parameter_groups(model, cfg["weight_decay"], cfg["learning_rate"], ratio, exempt=adamw),
        lr=cfg["learning_rate"])
    if cfg["lr_schedule"] == "constant":
        return optimizer, get_constant_schedule(optimizer)
    return optimizer, get_linear_schedule_with_warmup(optimizer, int(cfg["warmup_ratio"] * total_steps), total_steps)


@dataclasses.dataclass
class Hooks:
    """What a trial's caller hears (``train_and_evaluate``'s arguments of the same names); each may be None."""

    report: Report | None = None
    on_model: Callable | None = None
    on_predictions: Callable[[dict[str, np.ndarray]], None] | None = None
    on_state: Callable[[dict[str, Any]], None] | None = None
    on_kept_model: Callable[[nn.Module, dict[str, torch.Tensor]], None] | None = None


@dataclasses.dataclass
class Progress:
    """The training state beside the model, optimiser and data position: what a checkpoint holds and a resume
    restores (the checkpoint's keys are these fields' names)."""

    step: int = 0  # optimiser steps taken
    best: dict[str, float] = dataclasses.field(default_factory=dict)  # the best ID evaluation's metrics and step
    since_best: int = 0  # evaluations since the ID score last improved
    kept: dict[str, dict[str, np.ndarray]] = dataclasses.field(  # per-example predictions: latest and best
        default_factory=lambda: {"latest": {}, "best": {}})
    last: dict[str, float] = dataclasses.field(default_factory=dict)  # the last report
    best_model: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)  # its weights, if kept
    # each block's experts per ID token at the last evaluation (the stability diagnostic's previous state)
    chosen: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)
    best_dev: dict[str, float] = dataclasses.field(default_factory=dict)  # the best dev_score evaluation's metrics
    seconds: float = 0.0  # trained and evaluated so far, over the trial's attempts


class Trial:
    """One trial, built once (data, converted model, loaders, optimiser) and run top to bottom: ``run`` trains
    epoch by epoch, ``_train_step`` takes one optimiser step, ``_evaluate`` scores every set and keeps the best,
    ``_emit`` hands the caller predictions, the kept model, the checkpoint and the report, in that order."""

    def __init__(self, cfg: dict[str, Any], data: TaskData | None, hooks: Hooks):
        from transformers import set_seed

        self.cfg, self.hooks = cfg, hooks
        set_seed(cfg["seed"])
        self.data = data or load_trial_data(cfg)
        self.model, tokenizer = load_model(cfg["model"], self.data.task.num_labels, cfg["init"], cfg["seed"])
        calibration = calibration_batches(self.data.train, tokenizer, self.data.task, cfg) \
            if needs_calibration(hparams.emoe_config(cfg)) else None
        self.model = prepare_model(self.model, cfg, calibration)
        if hooks.on_model is not None:
            hooks.on_model(self.model)
        # eval_method: train with the converted layers dense (routing off) and evaluate as EMoE, or the reverse.
        self.train_dense, self.eval_dense = cfg["eval_method"] == "emoe", cfg["eval_method"] == "dense"
        set_bypass(self.model, self.train_dense)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device).train()
        micro = cfg["batch_size"] // cfg["grad_accum_steps"]
        order_seed = cfg["seed"] if cfg.get("data_seed") is None else cfg["data_seed"]
        dev = {} if self.data.dev is None else {"dev": self.data.dev}
        if self.data.task.image:
            self.train_loader = image_loader(self.data.train, micro, True, order_seed, by_domain=True)
            batch = cfg["eval_batch_size"] or 2 * micro
            oracle = {name: ds for name, ds in (("oracle", self.data.oracle), ("loo", self.data.loo)) if ds is not None}
            self.eval_loaders = {name: image_loader(ds, batch, False, 0) for name, ds in
                                 {"id": self.data.validation, **dev, **self.data.ood, **oracle}.items()}
            self.in_set_order = lambda preds: preds  # image sets are evaluated in their own order
        else:
            self.train_loader = _loader(tokenize(self.data.train, tokenizer, self.data.task, cfg["max_length"]),
                                        tokenizer, micro, True, order_seed, multiple_of=pad_multiple(cfg))
            self.eval_loaders, self.in_set_order = evaluation_loaders({"id": self.data.validation, **dev,
                                                                       **self.data.ood},
                                                                      tokenizer, self.data.task, cfg,
                                                                      self.model.config)
        self.eval_sizes = self.data.sizes()  # GLUE-X weighs each OOD set by its full size, whatever is evaluated
        self.steps_per_epoch = math.ceil(len(self.train_loader) / cfg["grad_accum_steps"])
        # max_steps: that many steps, over as many epochs as they take (DomainBed's); else whole epochs
        self.epochs = math.ceil(cfg["max_steps"] / self.steps_per_epoch) if cfg["max_steps"] else cfg["epochs"]
        self.total_steps = cfg["max_steps"] or self.steps_per_epoch * cfg["epochs"]
        self.optimizer, self.scheduler = make_optimizer(self.model, cfg, self.total_steps)
        self.autocast, self.scaler = _autocast(self.device, cfg["precision"])
        self.keep_model = cfg["keep_model"] == "best" and hooks.on_kept_model is not None
        # Under a LoRA regime the frozen weights never change and a rebuilt trial (same seed) recreates them exactly
        # (pre-trained weights, conversion, seeded noise): checkpoints hold the rest only (GPT2-XL: megabytes, not
        # 6 GB per evaluation).
        self.frozen = set() if cfg["regime"] == "full" else \
            {n for n, q in self.model.named_parameters() if not q.requires_grad}
        self.progress, self.losses = Progress(), []
        self.trainable = sum(q.numel() for q in self.model.parameters() if q.requires_grad)
        self.clock = time.monotonic()  # wall time counts from here (and from each restore)

    def run(self, resume: dict[str, Any] | None = None) -> dict[str, float]:
        """Train every epoch (from ``resume``'s position), evaluating every ``eval_steps`` and at each epoch's end;
        stop early when patience runs out. Returns the last report's metrics."""
        start_epoch, skip = self._restore(resume) if resume is not None else (0, 0)
        if resume is not None and resume["done"]:  # it ended at that evaluation: nothing left to train
            return self.progress.last
        cfg, loader = self.cfg, self.train_loader
        by_steps = bool(cfg["max_steps"])  # evaluations every eval_steps and at the last step, not per epoch
        for epoch in range(start_epoch, self.epochs):
            self.optimizer.zero_grad(set_to_none=True)
            epoch_start = loader.generator.get_state()  # this epoch's order is drawn from here
            for i, batch in enumerate(loader):
                if i < skip:  # trained before the checkpoint this run resumed from
                    if i == skip - 1:  # fetching the skipped batches drew from the RNGs (an image's augmentation):
                        _set_rng_state(resume["rng"])  # the next batch is fetched from the checkpoint's state
                    continue
                if not self._train_step(batch, i, epoch):
                    continue
                step = self.progress.step
                last = by_steps and step >= self.total_steps
                if last or cfg["eval_steps"] and step % cfg["eval_steps"] == 0 and \
                        (by_steps or step % self.steps_per_epoch):
                    if tracking.PATIENCE_STOP in self._evaluate((epoch, i + 1, epoch_start)) or last:
                        return self.progress.last
            skip = 0
            if not by_steps and tracking.PATIENCE_STOP in self._evaluate((epoch + 1, 0, loader.generator.get_state())):
                break
        return self.progress.last

    def _train_step(self, batch: dict[str, torch.Tensor], i: int, epoch: int) -> bool:
        """Forward and backward one micro-batch; True when it completed an optimiser step."""
        cfg, scaler = self.cfg, self.scaler
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with self.autocast:
            loss = self.model(**batch).loss
            extra = aux_loss(self.model)
            if extra is not None:
                loss = loss + extra
        if not torch.isfinite(loss):
            raise FloatingPointError(f"train_loss became {loss.item()} at step {self.progress.step} (epoch {epoch})")
        self.losses.append(loss.item())
        loss = loss / cfg["grad_accum_steps"]
        (scaler.scale(loss) if scaler else loss).backward()
        if (i + 1) % cfg["grad_accum_steps"] and i + 1 != len(self.train_loader):
            return False
        if cfg["max_grad_norm"] is not None:
            if scaler:
                scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg["max_grad_norm"])
        if scaler:
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.progress.step += 1
        return True

    def _evaluate(self, position: tuple[int, int, torch.Tensor]) -> dict[str, float]:
        """Score the ID and OOD sets, keep the best ID evaluation (strictly better, as the official code: the first
        reaching the best score is kept), build the report and hand it on (``_emit``)."""
        cfg, p = self.cfg, self.progress
        set_bypass(self.model, self.eval_dense)
        preds: dict[str, np.ndarray] = {}
        chosen: dict[int, np.ndarray] = {}
        per_set, entropies = evaluate(self.model, self.eval_loaders, self.device, self.autocast, self.data.task,
                                      preds if self.hooks.on_predictions else None, cfg["ood_protocol"], chosen)
        set_bypass(self.model, self.train_dense)
        p.kept["latest"] = preds
        stability = {tracking.block_metric(tracking.EXPERT_STABILITY, b): expert_stability(p.chosen[b], now)
                     for b, now in chosen.items() if b in p.chosen and p.chosen[b].shape == now.shape}
        p.chosen = chosen
        scores = {**score_metrics(per_set, self.eval_sizes, cfg["ood_protocol"]), **entropies, **stability}
        if not p.best or scores[tracking.ID_SCORE] > p.best[tracking.ID_SCORE]:
            p.best, p.since_best = {**scores, tracking.BEST_STEP: p.step}, 0
            p.kept["best"] = preds
            if self.keep_model:
                p.best_model.clear()
                p.best_model.update({k: v.detach().to("cpu", torch.float16 if v.is_floating_point() else v.dtype,
                                                      copy=True) for k, v in self.model.state_dict().items()})
        else:
            p.since_best += 1
        if tracking.DEV_SCORE in scores and (not p.best_dev or scores[tracking.DEV_SCORE] >
                                             p.best_dev[tracking.DEV_SCORE]):
            p.best_dev = {**scores, tracking.BEST_STEP: p.step}  # the clean rule's epoch (first among equals)
        now = time.monotonic()
        p.seconds, self.clock = p.seconds + now - self.clock, now
        out = {tracking.TRAIN_LOSS: float(np.mean(self.losses)) if self.losses else float("nan"),
               **(p.best if cfg["keep_best"] else scores), tracking.EPOCH: p.step / self.steps_per_epoch,
               tracking.STEP: p.step}
        if cfg["keep_best"]:
            out[tracking.CURRENT_ID_SCORE] = scores[tracking.ID_SCORE]
            if p.best_dev:  # the oracle's choice is reported as before; the clean rule's beside it
                out.update({tracking.clean_metric(k): v for k, v in p.best_dev.items() if is_score(k)})
            if self.data.oracle is not None:  # an image task: DomainBed's oracle reads the last evaluation
                out.update({tracking.last_metric(k): v for k, v in scores.items() if is_score(k)})
        out[tracking.WALL_TIME], out[tracking.TRAINABLE_PARAMS] = p.seconds, float(self.trainable)
        if self.device.type == "cuda":
            out[tracking.ACCELERATOR_TIME] = p.seconds * gpu_share()
        if cfg["patience"] and p.since_best >= cfg["patience"] and p.step < self.total_steps:
            out[tracking.PATIENCE_STOP] = 1.0
        self.losses.clear()
        p.last = out
        self._emit(out, position, p.step >= self.total_steps or tracking.PATIENCE_STOP in out)
        return out

    def _emit(self, out: dict[str, float], position: tuple[int, int, torch.Tensor], ended: bool) -> None:
        """The evaluation's predictions, the kept model (on a new best), the checkpoint, then the report.
        NOTE: all before the report, at every evaluation: a scheduler may stop the trial on any report (ASHA: for
        trailing, or at max_t), and nothing after it runs; a stopped trial keeps those of its last report."""
        h, p = self.hooks, self.progress
        if h.on_predictions is not None:
            h.on_predictions(self.in_set_order(p.kept["best" if self.cfg["keep_best"] else "latest"]))
        if self.keep_model and p.since_best == 0:  # a new best: kept now, so a trial a scheduler stops keeps one
            h.on_kept_model(self.model, p.best_model)
        if h.on_state is not None:
            h.on_state(self._checkpoint(position, ended))
        if h.report is not None:
            h.report(out)

    def _checkpoint(self, position: tuple[int, int, torch.Tensor], done: bool) -> dict[str, Any]:
        """The whole training state (its tensors the live ones: serialise before returning)."""
        epoch_next, batch_next, loader_state = position
        progress = {f.name: getattr(self.progress, f.name) for f in dataclasses.fields(Progress)}
        progress["best_model"] = self._trained(progress["best_model"])
        return {"model": self._trained(self.model.state_dict()), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict() if self.scaler else None,
                "rng": _rng_state(), "loader": loader_state, "epoch": epoch_next, "batch": batch_next,
                "done": done, **progress}

    def _trained(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``state`` without the frozen weights (all of it under full fine-tuning)."""
        return {k: v for k, v in state.items() if k not in self.frozen} if self.frozen else state

    def _restore(self, state: dict[str, Any]) -> tuple[int, int]:
        """Load a checkpoint; returns where training continues: the epoch and the micro-batches of it done."""
        missing, unexpected = self.model.load_state_dict(state["model"], strict=not self.frozen)
        if set(missing) - self.frozen or unexpected:
            raise ValueError(f"the checkpoint does not fit this trial's model (missing "
                             f"{sorted(set(missing) - self.frozen)[:3]}, unexpected {sorted(unexpected)[:3]})")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.progress = Progress(**{f.name: state[f.name] for f in dataclasses.fields(Progress)
                                    if f.name in state})
        self.progress.best_model = state.get("best_model") or {}
        if self.frozen and self.progress.best_model:  # the frozen weights, as the best evaluation had them
            current = self.model.state_dict()
            self.progress.best_model.update({k: current[k].detach().to("cpu", torch.float16, copy=True)
                                             for k in self.frozen})
        self.train_loader.generator.set_state(state["loader"])
        _set_rng_state(state["rng"])
        self.clock = time.monotonic()
        return state["epoch"], state["batch"]


def parse_ood(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--ood expects NAME=PATH, got {item!r}")
        out[name] = path
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=prog("python -m emoe.train"),
        description="Fine-tune and evaluate one EMoE (or dense) trial; log it to MLflow.")
    hparams.add_arguments(parser)
    parser.add_argument("--ood", action="append", metavar="NAME=PATH",
                        help="an extra OOD test set (csv, tsv, json lines or parquet with the task's fields); "
                             "repeatable")
    parser.add_argument("--tracking-uri", default=tracking.DEFAULT_TRACKING_URI,
                        help=f"MLflow store (default: {tracking.DEFAULT_TRACKING_URI}; http://host:port for a server)")
    parser.add_argument("--experiment", default="emoe-train", help="MLflow experiment (default: emoe-train)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow; print the metrics only")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        cfg = hparams.trial_config({**hparams.overrides_from_args(args), "ood": parse_ood(args.ood)})
        if not args.no_mlflow:
            tracking.check_tracking_uri(args.tracking_uri)
        data = load_trial_data(cfg)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    run = None
    if not args.no_mlflow:
        client = tracking.client(args.tracking_uri)
        run = tracking.TrialRun(client, tracking.get_or_create_experiment(client, args.experiment),
                                name=f"{cfg['method']}-{cfg['clustering']}-{cfg['gate']}-s{cfg['seed']}",
                                tags={tracking.ARM: "cli"})
        run.log_params(cfg)
        run.log_dict(hparams.emoe_config(cfg).to_dict(), "emoe_config.json")

    def report(result):
        print(" ".join(f"{k}={v:.4g}" for k, v in result.items()), flush=True)
        if run:
            run.log_metrics(result, step=int(result[tracking.STEP]))

    start = time.time()
    try:
        final = train_and_evaluate(cfg, report, data=data)
    except BaseException as e:
        if run:
            run.finish("failed", error=f"{type(e).__name__}: {e}")
        raise
    if run:
        run.finish("completed")
        print(f"MLflow run {run.run_id} in {args.tracking_uri} (mlflow ui --backend-store-uri {args.tracking_uri})")
    print(f"done in {time.time() - start:.0f}s: {tracking.ID_SCORE}={final[tracking.ID_SCORE]:.4f} "
          f"{tracking.OOD_SCORE}={final[tracking.OOD_SCORE]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
