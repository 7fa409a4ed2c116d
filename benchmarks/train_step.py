"""One training step (forward, backward, AdamW) of EMoE vs dense on MiniLM, batch 32, length 128, CPU.

    python benchmarks/train_step.py [--repeats 10] [--threads 2]

EMoE: constrained clustering, avg_keys gate, N=16, k=4, the last two blocks. Official EMoE (the paper preset's
router, scaled to MiniLM): N=64, k=16, one block (index 4 of 6, as 10 of 12 in BERT-base), capacity 1.5, gate noise
1.0, expert dropout 0.1, load-importance loss 0.01. All models run interleaved in one process; the figures are
ratios of median step times (the paper's reviewers saw about 1.10 for the official variant on GPU).
"""

from __future__ import annotations

import argparse

import torch
from _timing import compare, ratio_line

from emoe import EmoeConfig, aux_loss, convert, load_model
from emoe.sweep.trainable import quiet_libraries


def step_fn(model, batch):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step():
        out = model(**batch)
        extra = aux_loss(model)
        (out.loss if extra is None else out.loss + extra).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--length", type=int, default=128)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    quiet_libraries()
    dense = load_model("minilm")[0].train()
    emoe = convert(load_model("minilm")[0].train(), EmoeConfig(num_experts=16, top_k=4, layers=(-2, -1)))
    official = convert(load_model("minilm")[0].train(), EmoeConfig(
        num_experts=64, top_k=16, layers=(4,), capacity_factor=1.5, gate_noise=1.0, expert_dropout=0.1,
        aux_loss_weight=0.01))
    vocab = dense.config.vocab_size
    batch = {"input_ids": torch.randint(1000, vocab, (a.batch_size, a.length)),
             "attention_mask": torch.ones(a.batch_size, a.length, dtype=torch.long),
             "labels": torch.randint(0, 2, (a.batch_size,))}
    t = compare({"dense": step_fn(dense, batch), "emoe": step_fn(emoe, batch), "official": step_fn(official, batch)},
                repeats=a.repeats)
    print(f"MiniLM train step, batch {a.batch_size} x length {a.length}, {a.threads} threads, median of {a.repeats}:")
    print(f"  dense {t['dense'] * 1000:.0f} ms, EMoE (N=16, k=4, last 2 blocks, avg_keys) {t['emoe'] * 1000:.0f} ms, "
          f"official EMoE (N=64, k=16, block 4, capacity 1.5, noise, dropout, aux loss) {t['official'] * 1000:.0f} ms")
    print(ratio_line("  EMoE / dense step time", t["emoe"] / t["dense"], 1.05))
    print(ratio_line("  official EMoE / dense step time", t["official"] / t["dense"]))


if __name__ == "__main__":
    main()
