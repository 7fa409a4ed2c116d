"""Training regimes: which parameters train, at which learning rate, and NoisyTune's perturbation.

The regimes of the official EMoE scripts (qiuzh20/EMoE ``Language/``), through ``peft`` for LoRA:

- ``full`` (``search_glue_no_trainer.py``): every parameter trains, at one learning rate.
- ``lora`` (``search_glue_no_trainer_peft.py``): LoRA (r 8, alpha 16, dropout 0.1, on peft's default targets for
  the model type: BERT's query and value, GPT-2's c_attn) and the classification head (peft's ``modules_to_save``).
  The official script converts to MoE *after* wrapping the model in PEFT, so a converted layer's parameters are new
  and train in full: here a converted block's FFN (and any learnable gate) trains beside LoRA likewise.
- ``lora_block`` (``--tune_moe_layers_only``): LoRA, every parameter of the chosen blocks (``layers``; converted or
  not), and every parameter outside the blocks except the embeddings (a pooler, a final norm, the head).
- ``lora_gates`` (``--tune_moe_layers_only --tune_gates_only``): LoRA, the converted blocks' learnable gates (EMoE's
  avg-k has none; EMoE-learn's and GMoE's cosine routers), and every parameter outside the blocks except the
  embeddings; the blocks themselves stay frozen.

Learning rates: under the LoRA regimes the official optimiser gives LoRA's and the head's parameters the learning
rate and every other parameter a tenth of it (``body_lr_ratio``); weight decay as ``emoe.train``'s groups.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

REGIMES = ("full", "lora", "lora_block", "lora_gates")
LORA_ALPHA, LORA_DROPOUT = 16, 0.1  # the official LoraConfig (search_glue_no_trainer_peft.py)
OFFICIAL_BODY_LR_RATIO = {"full": 1.0, "lora": 0.1, "lora_block": 0.1, "lora_gates": 0.1}
NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


def base_of(model: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT wrapper (the model itself when it has none)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def lora_targets(model: nn.Module) -> list[str]:
    """peft's default LoRA target modules for the model's type (what the official ``LoraConfig`` without
    ``target_modules`` uses); ``ValueError`` (one line) when peft has none or the model has no such module."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    model_type = base_of(model).config.model_type
    targets = DEFAULTS.get(model_type)
    names = {name.rpartition(".")[2] for name, _ in base_of(model).named_modules()}
    if not targets or not set(targets) <= names:
        why = "it has none" if not targets else "its modules lack " + ", ".join(sorted(set(targets) - names))
        raise ValueError(f"the LoRA regimes need peft's default LoRA targets for model type {model_type!r}, and {why}; "
                         "use regime full")
    return list(targets)


def lora_config(model: nn.Module, r: int) -> dict[str, Any]:
    """The official LoRA settings for ``model`` (what ``save_converted`` records to rebuild the wrapper)."""
    return {"r": r, "lora_alpha": LORA_ALPHA, "lora_dropout": LORA_DROPOUT, "target_modules": lora_targets(model)}


def wrap_lora(model: nn.Module, settings: dict[str, Any]) -> nn.Module:
    """``model`` in peft's LoRA wrapper for sequence classification (the head a ``modules_to_save`` copy); every
    parameter but LoRA's and the head's frozen, as ``get_peft_model`` leaves them."""
    from peft import LoraConfig, get_peft_model

    emoe_config = getattr(model, "emoe_config", None)
    wrapped = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", inference_mode=False, **settings))
    wrapped.emoe_lora = dict(settings)
    if emoe_config is not None:
        base_of(wrapped).emoe_config = emoe_config
    return wrapped


def _block_parameters(model: nn.Module, blocks) -> set[int]:
    from emoe.architectures import find_blocks
    from emoe.convert import resolve_blocks

    _, modules = find_blocks(base_of(model))
    return {id(p) for b in resolve_blocks(blocks, len(modules)) for p in modules[b].parameters()}


def converted_parameters(model: nn.Module, gates_only: bool = False) -> set[int]:
    """The parameters of the converted layers (an EMoE layer's key, up and value projections, its per-expert biases
    and gate; a GMoE layer's experts and gate), or their learnable gates' only."""
    from emoe.convert import emoe_layers

    out = set()
    for layer in emoe_layers(model):
        if gates_only:
            out |= {id(p) for p in layer.gate.parameters()}
            continue
        out |= {id(p) for p in layer.parameters()}
        for proj in (*getattr(layer, "_keys_proj", ()), *getattr(layer, "_up_proj", ())):
            out |= {id(p) for p in proj.parameters()}
    return out


def outside_blocks(model: nn.Module) -> set[int]:
    """The parameters outside the blocks and the embeddings (a pooler, a final norm, the head), but not peft's
    unused original copy of the head."""
    from emoe.architectures import find_blocks

    base = base_of(model)
    layout, modules = find_blocks(base)
    inside = {id(p) for p in modules.parameters()}
    embeddings = {id(p) for path in layout.embeddings for p in base.base_model.get_submodule(path).parameters()}
    return {id(p) for n, p in model.named_parameters()
            if id(p) not in inside | embeddings and ".original_module." not in n}


def apply_regime(model: nn.Module, regime: str, lora_r: int = 8, blocks=()) -> nn.Module:
    """The model set up to train under ``regime``: unchanged for ``full``; for a LoRA regime, wrapped by peft and with
    exactly the parameters the official script trains left trainable (``blocks``: the chosen blocks for
    ``lora_block``, the ``layers`` knob: negative counts from the end). Returns the model to train (the wrapper, for
    LoRA)."""
    from emoe.config import check_choice

    check_choice("regime", regime, REGIMES)
    if regime == "full":
        return model
    converted = converted_parameters(model, gates_only=regime == "lora_gates")
    model = wrap_lora(model, lora_config(model, lora_r))
    train = converted
    if regime in ("lora_block", "lora_gates"):
        train = train | outside_blocks(model)
    if regime == "lora_block":
        train = train | _block_parameters(model, blocks)
    for name, p in model.named_parameters():
        if id(p) in train:
            p.requires_grad_(True)
    return model


def is_fast(name: str) -> bool:
    """LoRA's parameters and the head's (peft's trained copy): the official LoRA script's full-rate group."""
    return "lora_" in name or ".modules_to_save." in name or name.split(".")[0] in ("classifier", "score")


def parameter_groups(model: nn.Module, weight_decay: float, learning_rate: float,
                     body_lr_ratio: float = 1.0, exempt: bool = True) -> list[dict[str, Any]]:
    """AdamW's groups of the trainable parameters: no weight decay on biases and normalisation weights (``exempt``;
    off: every parameter decays, as DomainBed's Adam); LoRA's and the head's parameters at ``learning_rate``, the
    others at ``learning_rate * body_lr_ratio`` (empty groups left out)."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((name.endswith(NO_DECAY), is_fast(name) or body_lr_ratio == 1.0), []).append(p)
    return [{"params": params, "weight_decay": 0.0 if no_decay and exempt else weight_decay,
             "lr": learning_rate if fast else learning_rate * body_lr_ratio}
            for (no_decay, fast), params in sorted(groups.items())]


def add_noise(model: nn.Module, level: float, seed: int, exclude_head: bool = True) -> None:
    """NoisyTune (Wu et al. 2022) as the official scripts apply it: every parameter ``p`` gets
    ``(U[0, 1) - 0.5) * level * std(p)`` added in place (uniform in ``+-level * std(p) / 2``, ``std`` the unbiased
    standard deviation of ``p`` before the noise). The full fine-tuning script leaves the head out (names with
    ``classifier`` or ``score``: ``exclude_head``), the LoRA script does not. Draws from a generator seeded by
    ``seed``. NOTE: a one-element parameter (the cosine router's temperature) has no std; the official code would
    make it NaN: it is left unperturbed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if (exclude_head and ("classifier" in name or "score" in name)) or p.numel() < 2:
                continue
            std = torch.std(p.detach().float()).cpu()
            noise = (torch.rand(p.shape, generator=g) - 0.5) * level * std
            p.add_(noise.to(p.device, p.dtype))
