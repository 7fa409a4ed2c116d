"""Per model type: where the blocks are, and in each block the FFN's key and value projections.

Keys are the rows of the first projection (one per intermediate neuron; ``gate_proj`` for Llama-style gated MLPs),
values the columns of the second. Both are exposed as ``[d_ff, d]`` matrices whatever the storage layout.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn


@dataclasses.dataclass(frozen=True)
class FFNLayout:
    blocks: str  # from the base model to the ModuleList of blocks
    keys: str  # from a block to the first projection
    values: str  # from a block to the second projection
    transposed: bool = False  # Conv1D (GPT-2) stores weight as [in, out]
    up: str | None = None  # gated MLPs: the up projection, multiplied with act(keys x)
    # the FFN's own output dropout where the official conversion replaces the whole FFN and so drops it (GPT-2's
    # mlp.dropout, resid_pdrop); BERT's sits outside what the official code replaces (BertOutput), and stays
    replaced_dropout: str | None = None
    # GMoE (emoe.gmoe) replaces the module at ``gmoe_in`` (its input is the FFN's input x) by the GMoE layer, whose
    # output is the FFN's output, and makes the modules at ``gmoe_identity`` identities; ``act``: the activation
    activation: str | None = None
    gmoe_in: str | None = None
    gmoe_identity: tuple[str, ...] = ()
    # the embeddings (from the base model): the official tune_moe_layers_only rule freezes them; every other
    # parameter outside the blocks (a pooler, a final norm, the head) trains beside the chosen blocks
    embeddings: tuple[str, ...] = ("embeddings",)


_BERT = FFNLayout("encoder.layer", "intermediate.dense", "output.dense", activation="intermediate.intermediate_act_fn",
                  gmoe_in="intermediate", gmoe_identity=("output.dense",))
_LLAMA = FFNLayout("layers", "mlp.gate_proj", "mlp.down_proj", up="mlp.up_proj", activation="mlp.act_fn",
                   gmoe_in="mlp", embeddings=("embed_tokens",))
_VIT = FFNLayout("layers", "mlp.fc1", "mlp.fc2", activation="mlp.activation_fn", gmoe_in="mlp.fc1",
                 gmoe_identity=("mlp.activation_fn", "mlp.fc2"))

# model_type -> layouts tried in order (transformers 5 moved ViT's FFN to ``layers.N.mlp.fc1/fc2``).
ARCHITECTURES: dict[str, tuple[FFNLayout, ...]] = {
    "bert": (_BERT,),
    "roberta": (_BERT,),
    "distilbert": (FFNLayout("transformer.layer", "ffn.lin1", "ffn.lin2", activation="ffn.activation",
                             gmoe_in="ffn.lin1", gmoe_identity=("ffn.activation", "ffn.lin2")),),
    "gpt2": (FFNLayout("h", "mlp.c_fc", "mlp.c_proj", transposed=True, replaced_dropout="mlp.dropout",
                       activation="mlp.act", gmoe_in="mlp.c_fc", gmoe_identity=("mlp.act", "mlp.c_proj"),
                       embeddings=("wte", "wpe")),),
    "vit": (_VIT, _BERT),
    "deit": (_VIT, _BERT),
    "llama": (_LLAMA,),
    "mistral": (_LLAMA,),
    "qwen2": (_LLAMA,),
}


def _get(module: nn.Module, path: str):
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None


def find_blocks(model: nn.Module) -> tuple[FFNLayout, nn.ModuleList]:
    """The layout and the block list of a (possibly task-headed) transformers model."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ValueError(f"unsupported model type {model_type!r}; supported: {', '.join(ARCHITECTURES)}")
    base = getattr(model, "base_model", model)
    for layout in ARCHITECTURES[model_type]:
        blocks = _get(base, layout.blocks)
        if isinstance(blocks, nn.ModuleList) and len(blocks) and _get(blocks[0], layout.keys) is not None:
            return layout, blocks
    raise ValueError(f"model type {model_type!r} ({type(model).__name__}) has none of the known FFN layouts: "
                     + "; ".join(f"{l.blocks}.N.{{{l.keys},{l.values}}}" for l in ARCHITECTURES[model_type]))


def set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    """Replace the submodule at ``path`` (dotted, from ``root``) by ``module``."""
    owner, _, attr = path.rpartition(".")
    setattr(root.get_submodule(owner) if owner else root, attr, module)


def key_matrix(proj: nn.Module, transposed: bool) -> torch.Tensor:
    """Keys ``[d_ff, d]`` of a first projection (a view of its weight)."""
    return proj.weight.t() if transposed else proj.weight


def value_matrix(proj: nn.Module, transposed: bool) -> torch.Tensor:
    """Value vectors ``[d_ff, d]`` of a second projection (a view of its weight)."""
    return proj.weight if transposed else proj.weight.t()
