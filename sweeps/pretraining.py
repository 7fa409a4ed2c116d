"""Init-type ablation: pre-trained vs random weights, each dense and EMoE (the dense arms are the baselines)."""

from emoe.sweep import Ablation, main

ABLATION = Ablation("pretraining", {f"{init}-{method}": {"init": init, "method": method}
                                    for init in ("pretrained", "random") for method in ("dense", "emoe")},
                    factor="init")

if __name__ == "__main__":
    raise SystemExit(main(ABLATION))
