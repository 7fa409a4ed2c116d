"""Expert-count ablation: N in {4, 8, 16, 32, 64} x k/N in {1/8, 1/4, 1/2}, valid (integer k >= 1) pairs only."""

from fractions import Fraction

from emoe.sweep import DENSE, Ablation, main

PAIRS = [(n, int(n * r)) for n in (4, 8, 16, 32, 64) for r in (Fraction(1, 8), Fraction(1, 4), Fraction(1, 2))
         if (n * r).denominator == 1]
ABLATION = Ablation("experts", {**{f"N{n}-k{k}": {"num_experts": n, "top_k": k} for n, k in PAIRS},
                                DENSE: {"method": "dense"}}, factor="num_experts,top_k")

if __name__ == "__main__":
    raise SystemExit(main(ABLATION))
