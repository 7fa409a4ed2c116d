"""Init-type ablation: pre-trained vs random weights, each dense and EMoE (the dense arms are the baselines)."""

import emoe.sweep as sweep

ABLATION = sweep.Ablation("pretraining", {f"{init}-{method}": {"init": init, "method": method}
                                          for init in ("pretrained", "random") for method in ("dense", "emoe")},
                          factor="init")

if __name__ == "__main__":
    sweep.main(ABLATION)
