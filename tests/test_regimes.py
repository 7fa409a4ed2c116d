"""The paper's other comparisons against independent computations: GMoE's construction and its dense limit, NoisyTune's
perturbation, and the training regimes' trainable sets and learning-rate groups against the official scripts' rules
(qiuzh20/EMoE Language/search_glue_no_trainer*.py), restated here on parameter names."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from conftest import hidden, tiny_inputs, tiny_model
from emoe import EmoeConfig, convert, hparams, regimes
from emoe.architectures import find_blocks
from emoe.gmoe import GmoeFFN


def _classifier(arch: str, seed: int = 0):
    import transformers as T

    torch.manual_seed(seed)
    base = tiny_model(arch).config
    base.num_labels, base.pad_token_id = 2, 0
    cls = {"bert": T.BertForSequenceClassification, "gpt2": T.GPT2ForSequenceClassification}[arch]
    return cls(base).eval()


# -- GMoE --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
@pytest.mark.parametrize("expert_bias", ["shared", "per_expert"])
def test_gmoe_with_every_expert_a_copy_and_top_k_all_is_the_dense_ffn(arch, expert_bias):
    """R = N (every expert the whole FFN, identical) and k = N: the normalised router weights sum to 1, so the layer is
    the dense FFN, except that the official construction gives each expert the output bias / k, so that a token keeps
    bias / k: equal to the dense model whose FFN output bias is divided by k (the dense FFN itself at k = 1)."""
    for n in (1, 4):
        model, x = tiny_model(arch), tiny_inputs(arch)
        layout, blocks = find_blocks(model)
        reference = tiny_model(arch)
        for block, ref in zip(blocks, find_blocks(reference)[1]):
            bias = getattr(block.get_submodule(layout.values), "bias", None)
            if bias is not None:  # a bias that matters (transformers initialises them to zero)
                torch.nn.init.normal_(bias, std=0.5)
                ref.get_submodule(layout.values).bias.data.copy_(bias.data / n)
        expected = hidden(reference, x)
        cfg = EmoeConfig(method="gmoe", gate="learned", num_experts=n, top_k=n, expert_repeat=n, layers=(0, 1, 2),
                         clustering="random" if n > 1 else "contiguous", expert_bias=expert_bias)
        dense = hidden(model, x)
        convert(model, cfg, use_cache=False)
        assert torch.allclose(hidden(model, x), expected, atol=1e-5)
        assert torch.allclose(expected, dense) == (n == 1 or arch == "llama")  # llama's FFN has no bias


def test_gmoe_experts_are_unions_of_repeat_consecutive_clusters():
    """Expert i copies the rows of the neurons in clusters i..i+R-1 (mod N), in the FFN's order, recomputed here with
    Python sets on a random balanced partition; the value rows and the first bias follow the same neurons."""
    torch.manual_seed(0)
    d_ff, d, n, r = 24, 5, 6, 2
    keys, values, bias0 = torch.randn(d_ff, d), torch.randn(d_ff, d), torch.randn(d_ff)
    labels = torch.from_numpy(np.random.default_rng(0).permutation(np.repeat(np.arange(n), d_ff // n)))
    layer = GmoeFFN(keys, bias0, values, torch.randn(d), torch.nn.GELU(), labels, "learned", n, 2, repeat=r)
    for i in range(n):
        clusters = {(i + j) % n for j in range(r)}
        neurons = sorted(j for j in range(d_ff) if int(labels[j]) in clusters)
        rows = slice(layer.offsets[i], layer.offsets[i + 1])
        assert torch.equal(layer.fc1_weight[rows], keys[neurons])
        assert torch.equal(layer.fc2_weight[rows], values[neurons])
        assert torch.equal(layer.fc1_bias[rows], bias0[neurons])
    assert layer.offsets == [i * r * d_ff // n for i in range(n + 1)]
    with pytest.raises(ValueError, match="expert_repeat=7 must be at most num_experts=6"):
        EmoeConfig(method="gmoe", num_experts=6, top_k=1, expert_repeat=7)


def test_gmoe_experts_are_trained_apart_and_the_router_learns():
    """Unlike EMoE's experts (views of one FFN), GMoE's copies are parameters of their own: one step on a token routed
    to one expert changes that expert's copy and not the others'; the cosine router gets a gradient."""
    model = tiny_model("bert")
    convert(model, EmoeConfig(method="gmoe", gate="learned", num_experts=4, top_k=1, expert_repeat=4,
                              layers=(0,), clustering="contiguous"), use_cache=False)
    layer = model.encoder.layer[0].intermediate
    assert isinstance(layer, GmoeFFN) and isinstance(model.encoder.layer[0].output.dense, torch.nn.Identity)
    hidden(model.train(), tiny_inputs("bert")).sum().backward()
    assert layer.gate.sim_matrix.grad is not None and layer.gate.sim_matrix.grad.abs().sum() > 0
    grads = [layer.fc1_weight.grad[layer.offsets[e]:layer.offsets[e + 1]].abs().sum() for e in range(4)]
    used = layer.last_load > 0
    assert all((g > 0) == bool(u) for g, u in zip(grads, used))


# -- NoisyTune ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("regime", ["full", "lora"])
def test_noisytune_is_the_official_distribution_per_parameter_and_seeded(regime):
    """Each parameter's perturbation is uniform on +-level * std / 2 (std: the parameter's own, unbiased, before the
    noise): the KS test against that uniform law, its mean 0 within 4 standard errors, no draw outside the range.
    The full fine-tuning script leaves the head out, the LoRA script not; the same seed gives the same noise."""
    level = 0.15

    def noised(seed):
        model = regimes.apply_regime(_classifier("bert"), regime)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        regimes.add_noise(model, level, seed, exclude_head=regime == "full")
        return before, {n: p.detach().clone() for n, p in model.named_parameters()}

    before, after = noised(0)
    checked = 0
    for name, p in before.items():
        noise = (after[name] - p).flatten().double()
        half = level * torch.std(p).item() / 2
        is_head = "classifier" in name
        if half == 0 or (is_head and regime == "full"):
            assert torch.equal(after[name], p), name  # zero std (LoRA's B), or the head under full fine-tuning
            continue
        assert noise.abs().max() <= half * (1 + 1e-4) + 1e-7, name
        if noise.numel() >= 500:
            assert stats.kstest(noise.numpy(), stats.uniform(loc=-half, scale=2 * half).cdf).pvalue > 1e-4, name
            assert abs(noise.mean()) < 4 * (2 * half / math.sqrt(12)) / math.sqrt(noise.numel()), name
            checked += 1
    assert checked >= 5
    assert any("classifier" in n and not torch.equal(after[n], before[n]) for n in before) == (regime == "lora")
    again, different = noised(0)[1], noised(1)[1]
    assert all(torch.equal(again[n], after[n]) for n in after)
    assert any(not torch.equal(different[n], after[n]) for n in after)


def test_noisytune_method_is_the_dense_model_with_the_official_level():
    cfg = hparams.trial_config({"method": "noisytune"})
    assert cfg["noise_tuning"] == 0.15 and hparams.trial_config({"method": "emoe"})["noise_tuning"] == 0.0
    assert hparams.trial_config({"method": "emoe", "noise_tuning": 0.15})["noise_tuning"] == 0.15
    with pytest.raises(ValueError, match="is NoisyTune: use method noisytune"):
        hparams.trial_config({"method": "dense", "noise_tuning": 0.15})
    with pytest.raises(ValueError, match="noise_tuning=0 is the dense model"):
        hparams.trial_config({"method": "noisytune", "noise_tuning": 0})


# -- regimes: the official rules, restated on names --------------------------------------------------------------


def official_trainable(names, regime, arch, moe_layers, converted, one_score):
    """The official scripts' trainable set, on this model's parameter names.

    full: everything (one_score gates frozen: avg-k has no parameter here). LoRA: peft trains LoRA and the head's
    copy; the MoE conversion, after PEFT, makes the converted FFN's parameters new and trainable (one_score: gates
    frozen); then --tune_moe_layers_only / --tune_gates_only run the official freeze loop, ported line by line."""
    if regime == "full":
        return set(names)
    ffn = {"bert": ("intermediate.", "output.dense."), "gpt2": ("mlp.",)}[arch]
    block_key = {"bert": "layer", "gpt2": "h"}[arch]

    def in_converted_ffn(n):
        parts = n.split(".")
        if block_key not in parts or not converted:
            return False
        b = int(parts[parts.index(block_key) + 1])
        rest = ".".join(parts[parts.index(block_key) + 2:])
        return b in moe_layers and rest.startswith(ffn)

    train = {n for n in names if "lora_" in n or ".modules_to_save." in n}
    train |= {n for n in names if in_converted_ffn(n) and not ("gate" in n and one_score)}
    if regime in ("lora_block", "lora_gates"):  # the freeze loop of search_glue_no_trainer_peft.py
        tune_gates_only = regime == "lora_gates"
        train = set()
        for n in names:
            n_list, freeze = n.split("."), False
            if block_key in n_list:
                layer = int(n_list[n_list.index(block_key) + 1])
                if layer not in moe_layers:
                    freeze = True
                elif tune_gates_only:
                    freeze = True
            if arch == "gpt2" and ("wte" in n_list or "wpe" in n_list):
                freeze = True
            if arch == "bert" and "embeddings" in n_list:
                freeze = True
            if tune_gates_only and "gate" in n and not one_score:
                freeze = False
            if "lora" in n:
                freeze = False
            if not freeze:
                train.add(n)
    return {n for n in train if ".original_module." not in n}  # peft's unused copy of the head: no gradient


ARMS = {"dense": {"method": "dense"}, "emoe": {"method": "emoe"}, "emoe-learn": {"method": "emoe", "gate": "learned"},
        "gmoe": {"method": "gmoe", "gate": "learned", "num_experts": 4, "top_k": 2, "expert_repeat": 4}}


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
@pytest.mark.parametrize("regime", ["full", "lora", "lora_block", "lora_gates"])
@pytest.mark.parametrize("arm", list(ARMS))
def test_each_regime_trains_the_official_parameters_at_the_official_rates(arch, regime, arm):
    knobs = {"num_experts": 4, "top_k": 2, "layers": (1,), "clustering": "contiguous", **ARMS[arm]}
    cfg = hparams.emoe_config(hparams.trial_config(knobs))
    model = convert(_classifier(arch), cfg, use_cache=False)
    model = regimes.apply_regime(model, regime, 8, [1])
    names = [n for n, _ in model.named_parameters()]
    ours = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = official_trainable(names, regime, arch, [1], cfg.converts, one_score=cfg.gate == "avg_keys")
    assert ours == expected
    if regime != "full":
        assert any("lora_A" in n for n in ours) and not any("embeddings" in n or ".wte." in n for n in ours)
    lr = 1e-3
    ratio = regimes.OFFICIAL_BODY_LR_RATIO[regime]
    rate_of = {id(p): g["lr"] for g in regimes.parameter_groups(model, 0.0, lr, ratio) for p in g["params"]}
    for n, p in model.named_parameters():
        if p.requires_grad:  # the LoRA script's groups: 'lora', 'score', 'classifier' at lr, the rest at lr / 10
            fast = regime == "full" or any(k in n for k in ("lora", "score", "classifier"))
            assert rate_of[id(p)] == pytest.approx(lr if fast else lr / 10), n
    assert len(rate_of) == len(ours)


def test_lora_follows_the_official_config():
    model = regimes.apply_regime(_classifier("gpt2"), "lora", 8)
    config = model.peft_config["default"]
    assert (config.r, config.lora_alpha, config.lora_dropout) == (8, 16, 0.1)
    assert set(config.target_modules) == {"c_attn"} and config.fan_in_fan_out  # GPT-2's Conv1D, as peft sets it
    bert = regimes.apply_regime(_classifier("bert"), "lora", 4)
    assert set(bert.peft_config["default"].target_modules) == {"query", "value"}
    assert bert.peft_config["default"].r == 4


def test_lora_regimes_cap_epochs_as_the_lora_script():
    assert hparams.trial_config({"regime": "lora"})["epochs"] == 20
    assert hparams.trial_config({"regime": "lora_gates", "task": "qnli"})["epochs"] == 5
    assert hparams.trial_config({"task": "qnli"})["epochs"] == 3


def test_impossible_pairs_are_refused_in_one_line_before_any_training():
    """A LoRA regime on a model whose type peft has no (present) default targets for, a block out of range for
    lora_block, GMoE on an expert count below its repeat, an evaluation method only EMoE has: one line each."""
    from emoe.sweep.plan import check_regime

    vit = tiny_model("vit")  # transformers 5's ViT names its projections q_proj/v_proj; peft's defaults: query/value
    with pytest.raises(ValueError) as err:
        check_regime(vit, hparams.trial_config({"regime": "lora"}))
    assert "\n" not in str(err.value) and "use regime full" in str(err.value)
    check_regime(vit, hparams.trial_config({"regime": "full"}))
    with pytest.raises(ValueError, match="block index 7 out of range"):
        check_regime(_classifier("bert"), hparams.trial_config({"regime": "lora_block", "layers": (7,)}))
    for bad, message in (({"method": "gmoe", "num_experts": 4, "expert_repeat": 5}, "at most num_experts"),
                         ({"method": "gmoe", "eval_method": "dense"}, "needs method='emoe'"),
                         ({"method": "noisytune", "eval_method": "emoe"}, "needs method='emoe'"),
                         ({"regime": "qlora"}, "valid choices: full, lora, lora_block, lora_gates")):
        with pytest.raises(ValueError, match=message):
            hparams.trial_config(bad)


def test_trainable_parameters_of_the_gpt2_xl_lora_commands_by_formula():
    """The dry run's counts on GPT2-XL's real shape (weightless), against the arithmetic: LoRA r=8 on c_attn (1600 ->
    4800) in 48 blocks, r * (1600 + 4800) each, plus the score head 1600 x 2; EMoE under lora_gates adds ln_f (the
    official freeze loop leaves it trainable; avg-k has no parameter); LoRA + Block adds block 44 whole."""
    import transformers as T

    from emoe.sweep.ablations import ABLATIONS
    from emoe.sweep.plan import SweepSettings, make_plan, trainable_parameters

    def xl(**kw):
        return T.GPT2Config(n_embd=1600, n_layer=48, n_head=25, **kw)

    with torch.device("meta"):
        reference = T.GPT2ForSequenceClassification(xl())
    total = sum(p.numel() for p in reference.parameters())
    plan = make_plan(ABLATIONS["comparison_lora"], SweepSettings.from_preset("paper-gpt2-xl-lora"))
    counts = trainable_parameters(plan, xl(num_labels=2, pad_token_id=0))
    lora = 48 * 8 * (1600 + 4800) + 1600 * 2
    block = sum(p.numel() for p in reference.transformer.h[44].parameters())
    wrapped = total + lora  # the adapters, and peft's trained copy of the head beside the original
    assert counts["dense"] == (lora, wrapped)
    assert counts["emoe"] == (lora + 2 * 1600, wrapped + 64 * 1600)  # + ln_f; the experts' bias copies, frozen
    assert counts["block"] == (lora + 2 * 1600 + block, wrapped)
