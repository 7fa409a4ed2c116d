"""Expert-selection analysis (the paper's Fig. 3): the top-k experts, the k lowest-scoring ones, all but the top k."""

from emoe.sweep import Ablation, main

ABLATION = Ablation.over("expert_selection", ["top", "bottom", "not_top"], name="selection")

if __name__ == "__main__":
    raise SystemExit(main(ABLATION))
