"""The official presets (``emoe.sweep.design``: one per command of qiuzh20/EMoE Language/README.md) against the
README's commands and the official scripts' defaults, restated here as literals; each preset's dry run with its Hub
model served from a local Hugging Face cache; and one CPU trial of each preset on a tiny model of its architecture
with as many blocks as the real one (the presets convert block 10, 22 or 44)."""

import math
import re

import pytest
import torch
from conftest import exit_code, hub_cache

from emoe import hparams
from emoe.sweep.design import COMMANDS, PRESETS, SETTINGS, official_presets

# --- what the official README says, written out ------------------------------------------------------------------

# search_glue_no_trainer.py (README "Full Fine-tuning"): learning rates [2e-5, 3e-5, 5e-5], seeds [0, 1, 2]; no
# --use_fp16 (fp32); the script's defaults: per-device batch 32, no accumulation, 10 epochs (3 for MNLI, QQP, QNLI).
FULL = {"learning_rates": (2e-5, 3e-5, 5e-5), "precision": "fp32", "batch_size": 32, "grad_accum_steps": 1,
        "epochs": {"sst2": 10, "qnli": 3}}
# search_glue_no_trainer_peft.py (README "Parametric Efficient Tuning"): learning rates [2e-4, 3e-4, 5e-4], seeds
# [0, 1, 2]; --use_fp16; GPT2-XL: --per_device_train_batch_size 8 --gradient_accumulation_steps 2 (16 examples per
# optimiser step); the script's defaults: 20 epochs (5 for MNLI, QQP, QNLI), LoRA r 8.
LORA = {"learning_rates": (2e-4, 3e-4, 5e-4), "precision": "fp16", "batch_size": 16, "grad_accum_steps": 2,
        "epochs": {"sst2": 20, "qnli": 5}, "lora_r": 8}
SEEDS = (0, 1, 2)

# Each official setting: its Hub model, its EMoE block (--moe_layers), N and k of its EMoE commands, its script. The
# README's own: BERT-base full fine-tuning (--moe_layers 10, --num_experts 64 --top_k 16) and GPT2-XL LoRA
# (--moe_layers 44, --num_experts 64 --top_k 32); the paper's others take the README's block rule (second block from
# the end) and its N and k.
EXPECTED_SETTINGS = {
    "paper": dict(model="bert-base-cased", layers=(10,), num_experts=64, top_k=16, script=FULL),
    "paper-bert-large": dict(model="bert-large-cased", layers=(22,), num_experts=64, top_k=16, script=FULL),
    "paper-gpt2": dict(model="gpt2", layers=(10,), num_experts=64, top_k=16, script=FULL),
    # no README command: the LoRA script's own defaults for the batch (32, no accumulation)
    "paper-bert-large-lora": dict(model="bert-large-cased", layers=(22,), num_experts=64, top_k=32,
                                  script={**LORA, "batch_size": 32, "grad_accum_steps": 1}),
    "paper-gpt2-xl-lora": dict(model="gpt2-xl", layers=(44,), num_experts=64, top_k=32, script=LORA),
}
# Each README command: the knobs it sets (after trial_config resolves them). EMoE: --gate_type top --one_score
# --key_gate (avg_keys gates); EMoE-learn: --gate_type cosine_top (learned); GMoE: cosine_top with its own N, k and
# --expert_repeat; NoisyTune: --noise_tuning 0.15; LoRA + Block: --tune_moe_layers_only; the LoRA EMoE commands add
# --tune_gates_only.
EXPECTED_COMMANDS = {
    "full": {
        "dense": dict(method="dense", regime="full", noise_tuning=0.0, expert_repeat=1),
        "noisytune": dict(method="noisytune", regime="full", noise_tuning=0.15, expert_repeat=1),
        "gmoe": dict(method="gmoe", gate="learned", num_experts=6, top_k=1, expert_repeat=6, regime="full",
                     noise_tuning=0.0),
        "emoe": dict(method="emoe", gate="avg_keys", regime="full", noise_tuning=0.0, expert_repeat=1),
        "emoe-learn": dict(method="emoe", gate="learned", regime="full", noise_tuning=0.0, expert_repeat=1),
    },
    "lora": {
        "dense": dict(method="dense", regime="lora", noise_tuning=0.0, expert_repeat=1),
        "block": dict(method="dense", regime="lora_block", noise_tuning=0.0, expert_repeat=1),
        "gmoe": dict(method="gmoe", gate="learned", num_experts=8, top_k=2, expert_repeat=8, regime="lora_block",
                     noise_tuning=0.0),
        "emoe": dict(method="emoe", gate="avg_keys", regime="lora_gates", noise_tuning=0.0, expert_repeat=1),
        "emoe-learn": dict(method="emoe", gate="learned", regime="lora_gates", noise_tuning=0.0, expert_repeat=1),
    },
}
# What both scripts share (their defaults and the official router): constrained k-means (cluster seed 0), capacity
# 1.5, gate noise 1.0, --moe_drop 0.1, --aux_loss_weight 0.01; --max_length 128, eval batch 8, weight decay 0, no
# warm-up, no clipping, the best epoch kept, stop after 4 epochs without improvement (no_improvement > 3).
EXPECTED_SHARED = dict(clustering="constrained", cluster_seed=0, capacity_factor=1.5, gate_noise=1.0,
                       expert_dropout=0.1, aux_loss_weight=0.01, max_length=128, eval_batch_size=8, weight_decay=0.0,
                       warmup_ratio=0.0, max_grad_norm=None, keep_best=True, patience=4, init="pretrained",
                       max_train_samples=None, max_eval_samples=None)


def _script_of(setting: str) -> str:
    return "full" if EXPECTED_SETTINGS[setting]["script"] is FULL else "lora"


def expected_presets() -> dict[str, tuple[str, str]]:
    """Preset name -> (setting, command): ``<setting>`` for EMoE, ``<setting>-<command>`` for the others."""
    return {(s if c == "emoe" else f"{s}-{c}"): (s, c) for s in EXPECTED_SETTINGS
            for c in EXPECTED_COMMANDS[_script_of(s)]}


def expected_config(name: str) -> dict:
    """The knobs preset ``name`` must resolve to (``hparams.trial_config``), from the tables above."""
    setting, command = expected_presets()[name]
    s = EXPECTED_SETTINGS[setting]
    script = s["script"]
    knobs = {**EXPECTED_SHARED, "model": s["model"], "layers": s["layers"], "num_experts": s["num_experts"],
             "top_k": s["top_k"], "precision": script["precision"], "batch_size": script["batch_size"],
             "grad_accum_steps": script["grad_accum_steps"], **EXPECTED_COMMANDS[_script_of(setting)][command]}
    if "lora_r" in script:
        knobs["lora_r"] = script["lora_r"]
    return knobs


# --- the tiny models: each architecture with its real block count -------------------------------------------------

BLOCKS = {"bert-base-cased": ("bert", 12), "bert-large-cased": ("bert", 24), "gpt2": ("gpt2", 12),
          "gpt2-xl": ("gpt2", 48)}
# d_ff of the tiny models: a multiple of every N the presets use (64 EMoE, 6 and 8 GMoE), as the constrained
# clustering makes equal experts
TINY_D_FF = 192


def _save_tiny(path, arch: str, blocks: int, tokenizer_dir: str) -> str:
    import transformers as T

    tokenizer = T.AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    if arch == "bert":
        config = T.BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=blocks,
                              num_attention_heads=2, intermediate_size=TINY_D_FF, max_position_embeddings=128)
        model = T.BertForSequenceClassification(config)
    else:
        eos = tokenizer.eos_token_id
        config = T.GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=32, n_layer=blocks, n_head=2,
                              n_inner=TINY_D_FF, bos_token_id=eos, eos_token_id=eos)
        model = T.GPT2ForSequenceClassification(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, tiny_model_dir, tiny_gpt2_dir) -> dict[str, str]:
    """Hub id -> a local tiny model of its architecture and block count (BERTs with the MiniLM WordPiece tokenizer,
    GPT-2s with the byte-level BPE one, no pad token)."""
    tokenizers = {"bert": tiny_model_dir, "gpt2": tiny_gpt2_dir}
    return {hub_id: _save_tiny(tmp_path_factory.mktemp(f"tiny-{hub_id}"), arch, blocks, tokenizers[arch])
            for hub_id, (arch, blocks) in BLOCKS.items()}


@pytest.fixture(scope="module")
def fake_hub(tmp_path_factory, tiny_models) -> str:
    """A Hugging Face cache holding the tiny models as ``bert-base-cased``, ``bert-large-cased``, ``gpt2``,
    ``gpt2-xl``."""
    root = tmp_path_factory.mktemp("hf-cache")
    for hub_id, path in tiny_models.items():
        hub_cache(root, hub_id, path)
    return str(root)


@pytest.fixture
def offline_hub(fake_hub, monkeypatch, tmp_path):
    """The Hub unreachable (HF_HUB_OFFLINE), its cache the fake one; the working directory a fresh folder; the dry
    run's matmul measurement replaced by a fixed speed (its estimate is not what these tests check)."""
    from huggingface_hub import constants

    from emoe import hub
    from emoe.sweep import estimate

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", fake_hub)
    monkeypatch.setattr(estimate, "matmul_flops", lambda threads, **kw: [1e10] * 9)
    monkeypatch.chdir(tmp_path)
    hub.unreachable.cache_clear()
    yield tmp_path
    hub.unreachable.cache_clear()


def _local(trial: dict, tiny_models: dict[str, str]) -> dict:
    return {**trial, "model": tiny_models[trial["model"]]}


# --- a. every official command has its preset, with the official values -------------------------------------------


def test_every_official_command_has_its_preset():
    """The language README's commands here; the vision README's (paper-vit-s, paper-vit-b) in test_vision.py."""
    vision = {f"paper-vit-{size}{command}" for size in "sb" for command in ("", "-dense", "-gmoe")}
    assert set(official_presets()) == set(expected_presets()) | vision
    assert len(official_presets()) == 25 + 6
    assert all(name == "paper" or name.startswith("paper-") for name in official_presets())
    assert set(official_presets()) <= set(PRESETS)
    assert set(SETTINGS) == set(EXPECTED_SETTINGS) | {"paper-vit-s", "paper-vit-b"}
    assert {script: set(commands) for script, commands in COMMANDS.items() if script != "vision"} == \
        {script: set(commands) for script, commands in EXPECTED_COMMANDS.items()}


@pytest.mark.parametrize("name", sorted(expected_presets()))
def test_each_preset_sets_the_official_values(name, tiny_models):
    preset = PRESETS[name]
    trial = preset["trial"]
    assert trial["model"] == expected_config(name)["model"]
    cfg = hparams.trial_config(_local(trial, tiny_models))
    expected = expected_config(name)
    for knob, value in expected.items():
        got = trial["model"] if knob == "model" else cfg[knob]
        assert got == value, f"{name}: {knob} is {got!r}, the official command's is {value!r}"
    script = EXPECTED_SETTINGS[expected_presets()[name][0]]["script"]
    assert tuple(preset["learning_rates"]) == script["learning_rates"]
    assert preset.get("seeds") in (None, SEEDS)  # None: the seed knob's grid, which is the scripts' [0, 1, 2]
    assert hparams.KNOBS["seed"].grid == SEEDS
    assert preset["scheduler"] == "none"  # every rate runs to its end (or patience), as the scripts run them
    for task, epochs in script["epochs"].items():
        assert hparams.trial_config(_local({**trial, "task": task}, tiny_models))["epochs"] == epochs, task
    assert cfg["batch_size"] % cfg["grad_accum_steps"] == 0


def test_the_readme_s_own_commands_spelled_out():
    """The README's commands, value by value, on the presets it names directly."""
    xl = hparams.trial_config({**PRESETS["paper-gpt2-xl-lora"]["trial"], "model": "minilm"})
    assert PRESETS["paper-gpt2-xl-lora"]["trial"]["model"] == "gpt2-xl"
    assert (xl["layers"], xl["num_experts"], xl["top_k"], xl["regime"], xl["precision"]) == \
        ((44,), 64, 32, "lora_gates", "fp16")
    assert (xl["batch_size"], xl["grad_accum_steps"], xl["epochs"]) == (16, 2, 20)
    assert PRESETS["paper-gpt2-xl-lora"]["learning_rates"] == (2e-4, 3e-4, 5e-4)
    gmoe = hparams.trial_config({**PRESETS["paper-gmoe"]["trial"], "model": "minilm"})
    assert (gmoe["method"], gmoe["gate"], gmoe["num_experts"], gmoe["top_k"], gmoe["expert_repeat"],
            gmoe["regime"], gmoe["layers"]) == ("gmoe", "learned", 6, 1, 6, "full", (10,))
    assert PRESETS["paper-gmoe"]["learning_rates"] == (2e-5, 3e-5, 5e-5)
    xl_gmoe = hparams.trial_config({**PRESETS["paper-gpt2-xl-lora-gmoe"]["trial"], "model": "minilm"})
    assert (xl_gmoe["num_experts"], xl_gmoe["top_k"], xl_gmoe["expert_repeat"], xl_gmoe["regime"]) == \
        (8, 2, 8, "lora_block")
    noisy = hparams.trial_config({**PRESETS["paper-noisytune"]["trial"], "model": "minilm"})
    assert (noisy["method"], noisy["noise_tuning"]) == ("noisytune", 0.15)
    for setting in ("paper-bert-large-lora", "paper-gpt2-xl-lora"):
        dense = hparams.trial_config({**PRESETS[f"{setting}-dense"]["trial"], "model": "minilm"})
        block = hparams.trial_config({**PRESETS[f"{setting}-block"]["trial"], "model": "minilm"})
        assert (dense["method"], dense["regime"]) == ("dense", "lora")
        assert (block["method"], block["regime"]) == ("dense", "lora_block")


# The Hub configs' shapes (config.json of each model): blocks, width, heads, d_ff. A preset's block must exist and each
# N must divide d_ff (the official conversion asserts d_ff % num_experts == 0, and so does the constrained clustering),
# except for GMoE's whole copies (R = N), where no partition is used: BERT-large's GMoE keeps N = 6.
REAL_SHAPES = {"bert-base-cased": (12, 768, 12, 3072), "bert-large-cased": (24, 1024, 16, 4096),
               "gpt2": (12, 768, 12, 3072), "gpt2-xl": (48, 1600, 25, 6400)}


@pytest.mark.parametrize("name", sorted(expected_presets()))
def test_each_preset_fits_its_real_model(name):
    """The preset's conversion planned on a weightless (meta) model of the real shape: its block exists, its N
    divides d_ff."""
    import transformers as T

    from emoe.convert import plan_conversion

    trial = PRESETS[name]["trial"]
    blocks, width, heads, d_ff = REAL_SHAPES[trial["model"]]
    cfg = hparams.trial_config({**trial, "model": "minilm"})
    if BLOCKS[trial["model"]][0] == "bert":
        config = T.BertConfig(hidden_size=width, num_hidden_layers=blocks, num_attention_heads=heads,
                              intermediate_size=d_ff)
    else:
        config = T.GPT2Config(n_embd=width, n_layer=blocks, n_head=heads, n_inner=d_ff)
    with torch.device("meta"):
        model = T.AutoModelForSequenceClassification.from_config(config)
    plan = plan_conversion(model, hparams.emoe_config(cfg))
    assert [p["block"] for p in plan] == ([] if cfg["method"] in ("dense", "noisytune") else list(cfg["layers"]))


# --- b. the dry runs --------------------------------------------------------------------------------------------


def _dry_run(capsys, *argv) -> tuple[int, str, str]:
    from emoe.cli import main

    code = exit_code(lambda: main(["sweep", *argv]))
    out = capsys.readouterr()
    return code, out.out, out.err


def _rows(out: str) -> list[tuple[str, str, int, float]]:
    """The dry run's trial rows: (task, arm, seed, learning rate)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:4] == ["task", "arm", "seed", "learning_rate"])
    rows = []
    for line in lines[start + 1:]:
        task, arm, seed, lr = line.split()[:4]
        rows.append((task, arm, int(seed), float(lr)))
    return rows


def _rows_or_none(out: str):
    try:
        return _rows(out)
    except StopIteration:  # no trial table
        return None


def _line(out: str, prefix: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(prefix))


def _tiny_flags(tiny_data_dir, where) -> list[str]:
    return ["--dry-run", "--data-dir", str(tiny_data_dir), "--max-train-samples", "32", "--max-eval-samples", "16",
            "--tracking-uri", f"sqlite:///{where}/mlflow.db", "--storage-path", str(where / "ray")]


@pytest.mark.parametrize("name", sorted(expected_presets()))
def test_each_preset_s_dry_run(name, offline_hub, tiny_data_dir, capsys):
    """The official command as its script runs it: 3 seeds x its 3 learning rates, the model from the (fake) Hub
    cache, its method, regime and precision shown."""
    code, out, err = _dry_run(capsys, "official", "--preset", name, *_tiny_flags(tiny_data_dir, offline_hub))
    assert code == 0, err
    expected = expected_config(name)
    script = EXPECTED_SETTINGS[expected_presets()[name][0]]["script"]
    rows = _rows(out)
    assert len(rows) == 9
    assert sorted(rows) == sorted(("sst2", "official", s, lr) for s in SEEDS for lr in script["learning_rates"])
    # the experiment is the ablation's (emoe-official) or the preset's own (emoe-official-<preset>)
    assert re.fullmatch(rf"ablation official(-{name})?: 1 arms x 3 seeds x 3 learning rates = 9 trials "
                        rf"\(preset {name}\)", _line(out, "ablation official"))
    shared = re.match(rf"shared: model {expected['model']} \(([0-9.]+)M block parameters\)", _line(out, "shared:"))
    assert shared and float(shared[1]) < 5  # the tiny model from the fake cache: its config was read there
    method = _line(out, "method:")
    assert method.startswith(f"method: method {expected['method']}, regime {expected['regime']}, ")
    assert f"noise_tuning {expected['noise_tuning']}" in method
    assert f"expert_repeat {expected['expert_repeat']}" in method
    emoe = _line(out, "emoe:")
    assert f"layers {expected['layers']}, num_experts {expected['num_experts']}, top_k {expected['top_k']}, " in emoe
    if "gate" in expected:  # the commands that convert; the others leave the (unused) gate at its default
        assert f"gate {expected['gate']}, " in emoe
    protocol = _line(out, "protocol:")
    assert (f"batch_size {expected['batch_size']}, grad_accum_steps {expected['grad_accum_steps']}, "
            f"eval_batch_size 8, precision {expected['precision']}") in protocol
    assert _line(out, "scheduler:").startswith("scheduler: none")
    epochs = script["epochs"]["sst2"]
    assert _line(out, "task sst2:").startswith(f"task sst2: {epochs} epoch(s), 32 training examples")


def _lora_comparison() -> str:
    """The LoRA comparison's registry name (``comparison-lora``; ``comparison_lora`` spells it too)."""
    from emoe.sweep.ablations import ABLATIONS

    (name,) = [n for n in ABLATIONS if n.replace("_", "-") == "comparison-lora"]
    return name


@pytest.mark.parametrize("ablation, preset, arms", [
    ("comparison", "paper", ["dense", "noisytune", "gmoe", "emoe", "emoe-learn"]),
    ("comparison-lora", "paper-gpt2-xl-lora", ["dense", "block", "gmoe", "emoe", "emoe-learn"])])
def test_the_comparisons_dry_runs(ablation, preset, arms, offline_hub, tiny_data_dir, capsys):
    ablation = _lora_comparison() if ablation == "comparison-lora" else ablation
    code, out, err = _dry_run(capsys, ablation, "--preset", preset, *_tiny_flags(tiny_data_dir, offline_hub))
    assert code == 0, err
    rows = _rows(out)
    assert len(rows) == 45
    rates = EXPECTED_SETTINGS[preset]["script"]["learning_rates"]
    assert sorted(rows) == sorted(("sst2", a, s, lr) for a in arms for s in SEEDS for lr in rates)
    assert _line(out, f"ablation {ablation}:").endswith(f"5 arms x 3 seeds x 3 learning rates = 45 trials "
                                                        f"(preset {preset})")


@pytest.mark.parametrize("ablation, preset, fits", [
    ("comparison", "paper-gpt2-xl-lora", ["paper", "paper-bert-large", "paper-gpt2"]),
    ("comparison", "paper-bert-large-lora-gmoe", ["paper", "paper-bert-large", "paper-gpt2"]),
    ("comparison-lora", "paper", ["paper-bert-large-lora", "paper-gpt2-xl-lora"]),
    ("comparison-lora", "paper-gpt2-dense", ["paper-bert-large-lora", "paper-gpt2-xl-lora"])])
def test_a_comparison_refuses_the_other_script_s_presets(ablation, preset, fits, offline_hub, tiny_data_dir, capsys):
    ablation = _lora_comparison() if ablation == "comparison-lora" else ablation
    code, out, err = _dry_run(capsys, ablation, "--preset", preset, *_tiny_flags(tiny_data_dir, offline_hub))
    assert code == 2
    assert not _rows_or_none(out)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: ablation {ablation} runs the commands of regime ")
    assert f"preset {preset} sets regime " in lines[0]
    other = "comparison_lora" if ablation == "comparison" else "comparison"
    assert "use --preset " + " or ".join(fits) + " (" in lines[0] and f"the ablation {other}" in lines[0]


# --- c. one CPU trial of each preset on a tiny model of its architecture -----------------------------------------


@pytest.fixture
def one_thread():
    """One torch thread, as a sweep trial with ``--cpus-per-trial 1``: these tiny models are all per-op overhead,
    which a second thread only slows (much, on a loaded machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", sorted(expected_presets()))
def test_each_preset_s_trial_runs_on_a_tiny_model(name, tiny_models, tiny_data_dir, one_thread):
    """The preset's own trial (method, regime, block, N, k, router, precision: on CPU fp16 means no autocast) on a
    tiny model of its architecture and block count, a few steps on a slice of SST-2: it trains and is scored ID and
    OOD."""
    from emoe.convert import emoe_layers
    from emoe.train import train_and_evaluate

    preset = PRESETS[name]
    trial = _local(preset["trial"], tiny_models)
    trial.update(data_dir=str(tiny_data_dir), task="sst2", max_train_samples=32, max_eval_samples=16, epochs=1,
                 batch_size=8, learning_rate=preset["learning_rates"][0], seed=0)
    if preset["trial"]["grad_accum_steps"] > 1:
        trial["grad_accum_steps"] = 2
    built = []
    reported = []
    metrics = train_and_evaluate(trial, report=reported.append, on_model=built.append)
    expected = expected_config(name)
    kinds = {"emoe": "EmoeFFN", "gmoe": "GmoeFFN"}
    converted = [(type(m).__name__, m.block, m.num_experts, m.top_k) for m in emoe_layers(built[0])]
    assert converted == ([(kinds[expected["method"]], *expected["layers"], expected["num_experts"], expected["top_k"])]
                         if expected["method"] in kinds else [])
    lora = any("lora_" in n for n, _ in built[0].named_parameters())
    assert lora == (expected["regime"] != "full")
    assert math.isfinite(metrics["id_score"]) and 0.0 <= metrics["id_score"] <= 1.0
    assert math.isfinite(metrics["ood_score"]) and 0.0 <= metrics["ood_score"] <= 1.0
    assert reported and "ood_score" in reported[-1] and "id_score" in reported[-1]
    assert math.isfinite(metrics["train_loss"])
