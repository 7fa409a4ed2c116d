"""The cost of a trial checkpoint: seconds to serialise the whole training state and its size on disk.

    python benchmarks/checkpoint.py [--repeats 3]

The state a trial checkpoints at each evaluation (emoe.train's ``on_state``: model, AdamW with both moments after one
step, scheduler, RNG states, data position) for the packaged MiniLM (EMoE, N=16, k=4, the last two blocks) and for a
BERT-base-sized model (random weights from bert-base's shape, the paper preset's conversion: one block, N=64, k=16),
written with ``torch.save`` to a temporary directory on this machine's disk (Tune then copies it to the storage path).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from emoe import EmoeConfig, convert, load_model
from emoe.sweep.trainable import quiet_libraries


def training_state(model) -> dict:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    batch = {"input_ids": torch.randint(100, 2000, (4, 32)), "attention_mask": torch.ones(4, 32, dtype=torch.long),
             "labels": torch.tensor([0, 1, 0, 1])}
    model(**batch).loss.backward()
    opt.step()
    sched.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "rng": {"torch": torch.get_rng_state()}, "epoch": 0, "batch": 10, "step": 10}


def measure(name: str, model, repeats: int) -> str:
    state = training_state(model)
    params = sum(p.numel() for p in model.parameters())
    times, size = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            path = Path(tmp) / f"state{i}.pt"
            start = time.perf_counter()
            torch.save(state, path)
            times.append(time.perf_counter() - start)
            size = path.stat().st_size
            path.unlink()
    return (f"{name}: {params / 1e6:.1f}M parameters, checkpoint {size / 2**20:.0f} MB "
            f"({size / params:.1f} bytes per parameter), {statistics.median(times):.2f} s to write (median of "
            f"{repeats})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    quiet_libraries()
    minilm, _ = load_model("minilm", num_labels=2)
    convert(minilm, EmoeConfig(num_experts=16, top_k=4, layers=(-2, -1)))
    print(measure("MiniLM, EMoE", minilm, args.repeats))
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    bert = BertForSequenceClassification(BertConfig(num_labels=2))  # bert-base's shape, random weights
    convert(bert, EmoeConfig(num_experts=64, top_k=16, layers=(10,), clustering="random"))
    print(measure("BERT-base size, EMoE (one block)", bert, args.repeats))


if __name__ == "__main__":
    main()
