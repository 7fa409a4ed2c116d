"""Item 2: sparse execution (each token computes only its top-k experts) vs the masked mode vs the dense FFN.

    python benchmarks/sparse_ffn.py [--tokens 4096] [--device cpu|cuda] [--dtype fp32|bf16]

One BERT FFN layer (hidden 768, d_ff 3072; random weights, balanced random partition, avg_keys gate), k/N = 1/4,
inference. Prints each execution's time relative to the dense FFN, measured interleaved in one run, and the largest
difference between sparse and masked outputs.
"""

from __future__ import annotations

import argparse
import copy

import torch
from _timing import compare, ratio_line
from transformers import BertConfig, BertModel

from emoe import EmoeConfig, convert, set_execution

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def ffn(layer):
    """The FFN of a BERT block, without its residual and LayerNorm: intermediate (keys + GELU), output.dense."""
    return lambda x: layer.output.dense(layer.intermediate(x))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--experts", default="16:4,64:16", help="N:k pairs, comma-separated (default 16:4,64:16)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=DTYPES, default="fp32")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dtype = DTYPES[a.dtype]
    base = BertModel(BertConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=1,
                                num_attention_heads=12)).eval()
    x = torch.randn(a.tokens, 768, device=a.device, dtype=dtype)
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    dense_layer = base.encoder.layer[0].to(a.device, dtype)
    print(f"one FFN (768 -> 3072 -> 768), {a.tokens} tokens, {a.device} {a.dtype}, "
          f"{a.threads if a.device == 'cpu' else ''} threads, median of {a.repeats} interleaved rounds")
    for pair in a.experts.split(","):
        n, k = map(int, pair.split(":"))
        model = convert(copy.deepcopy(base), EmoeConfig(clustering="random", num_experts=n, top_k=k, layers=(0,)))
        layer = model.encoder.layer[0].to(a.device, dtype)
        sparse_model = copy.deepcopy(model)
        set_execution(sparse_model, "sparse")
        sparse_layer = sparse_model.encoder.layer[0]
        runs = {"dense": ffn(dense_layer), "masked": ffn(layer), "sparse": ffn(sparse_layer)}

        def timed(fn):
            def call():
                with torch.inference_mode():
                    fn(x)
                sync()
            return call

        with torch.inference_mode():
            diff = (runs["sparse"](x).float() - runs["masked"](x).float()).abs().max().item()
        t = compare({name: timed(fn) for name, fn in runs.items()}, repeats=a.repeats)
        print(f"N={n}, k={k}: dense {t['dense'] * 1e3:.1f} ms, masked {t['masked'] * 1e3:.1f} ms, "
              f"sparse {t['sparse'] * 1e3:.1f} ms; max |sparse - masked| = {diff:.2e}")
        print(ratio_line("  masked / dense", t["masked"] / t["dense"]))
        print(ratio_line("  sparse / dense", t["sparse"] / t["dense"], 0.5))


if __name__ == "__main__":
    main()
