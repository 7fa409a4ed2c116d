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


def write_jsonl(path: Path, rows) -> Path:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _head(path: Path, n: int):
    import json

    with open(path) as f:
        return [json.loads(next(f)) for _ in range(n)]


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    """The shared data's layout with a few rows of each sentiment file (balanced labels) and of SNLI/SICK."""
    root = tmp_path_factory.mktemp("data")
    for rel, n in [("sst2/train.jsonl", 400), ("sst2/validation.jsonl", 64), ("imdb/test.jsonl", 40),
                   ("yelp/test.jsonl", 1000), ("amazon/test.jsonl", 1000), ("snli/train.jsonl", 64),
                   ("snli/validation.jsonl", 32), ("sick/test.jsonl", 32)]:
        rows = _head(DATA_DIR / rel, n)
        if n == 1000:  # yelp/amazon files are sorted by label: take both ends
            rows = rows[:16] + rows[-16:]
        write_jsonl(root / rel, rows)
    return root


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A tiny random BERT (hidden 32, 2 blocks, d_ff 64) saved with the packaged MiniLM's tokenizer."""
    import transformers as T

    from emoe.convert import resolve_model

    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = T.AutoTokenizer.from_pretrained(resolve_model("minilm"))
    torch.manual_seed(0)
    config = T.BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=128)
    T.BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
