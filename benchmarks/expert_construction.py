"""Item 3: expert construction for a BERT-base-sized model (12 blocks, keys 3072 x 768, N=64), each algorithm,
and the partition cache's second run.

    python benchmarks/expert_construction.py [--blocks 12] [--experts 64] [--algorithms constrained,kmeans,...]

The keys are a randomly initialised bert-base's (no Hub here; pass --model bert-base-uncased where it is reachable).
Each algorithm runs once with an empty cache (computing and storing every block's partition) and once more (cache
hits); the cache lives in a temporary directory, so nothing of the user's is touched.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch


def main() -> None:
    from emoe.architectures import find_blocks, key_matrix
    from emoe.clustering import CLUSTERING, partition

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--blocks", type=int, default=12)
    p.add_argument("--experts", type=int, default=64)
    p.add_argument("--algorithms", default=",".join(CLUSTERING))
    p.add_argument("--model", default=None, help="a Hub id or directory (default: random bert-base)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.model:
        from transformers import AutoModel

        model = AutoModel.from_pretrained(a.model)
    else:
        from transformers import BertConfig, BertModel

        torch.manual_seed(0)
        model = BertModel(BertConfig(num_hidden_layers=a.blocks))  # bert-base: hidden 768, d_ff 3072
    layout, blocks = find_blocks(model)
    keys = [key_matrix(b.get_submodule(layout.keys), layout.transposed).detach() for b in blocks][:a.blocks]
    print(f"{len(keys)} blocks, keys {tuple(keys[0].shape)}, N={a.experts}, {a.threads} threads")
    print(f"{'algorithm':<13} {'first run (s)':>13} {'per block':>10} {'cached run (s)':>15} {'cached/first':>13}")
    for algorithm in a.algorithms.split(","):
        with tempfile.TemporaryDirectory() as cache:
            os.environ["EMOE_CACHE_DIR"] = cache
            runs = []
            for _ in range(2):
                start = time.perf_counter()
                for i, k in enumerate(keys):
                    partition(k, algorithm, a.experts, seed=0, layer=i)
                runs.append(time.perf_counter() - start)
        print(f"{algorithm:<13} {runs[0]:>13.1f} {runs[0] / len(keys):>10.2f} {runs[1]:>15.3f} "
              f"{runs[1] / runs[0]:>13.4f}", flush=True)


if __name__ == "__main__":
    main()
