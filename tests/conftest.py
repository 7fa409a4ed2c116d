import os
from pathlib import Path

import pytest
import torch

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    os.environ["EMOE_CACHE_DIR"] = str(tmp_path_factory.mktemp("emoe-cache"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.use_deterministic_algorithms(False)
    yield


def tiny_model(arch: str, seed: int = 0):
    """A tiny random-weight base model of ``arch`` (hidden 32, d_ff 64, 3 blocks), in eval mode."""
    import transformers as T

    torch.manual_seed(seed)
    common = dict(vocab_size=100)
    configs = {
        "bert": lambda: T.BertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                                     **common),
        "roberta": lambda: T.RobertaConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                                           intermediate_size=64, **common),
        "distilbert": lambda: T.DistilBertConfig(dim=32, hidden_dim=64, n_layers=3, n_heads=2, **common),
        "gpt2": lambda: T.GPT2Config(n_embd=32, n_layer=3, n_head=2, n_inner=64, bos_token_id=0, eos_token_id=0,
                                     **common),
        "vit": lambda: T.ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=3,
                                   num_attention_heads=2, intermediate_size=64),
        "llama": lambda: T.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                       num_attention_heads=2, num_key_value_heads=2, **common),
    }
    return T.AutoModel.from_config(configs[arch]()).eval()


def tiny_inputs(arch: str, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    if arch == "vit":
        return {"pixel_values": torch.randn(2, 3, 16, 16, generator=g)}
    return {"input_ids": torch.randint(1, 100, (2, 9), generator=g)}


def hidden(model, inputs) -> torch.Tensor:
    return model(**inputs).last_hidden_state


ARCHS = ("bert", "roberta", "distilbert", "gpt2", "vit", "llama")
