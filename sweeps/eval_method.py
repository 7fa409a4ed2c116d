"""Where the gain comes from (the paper's Fig. 3): EMoE trained and evaluated as trained (same), EMoE trained but
evaluated with every expert on (dense_eval), and dense training evaluated as EMoE, routing on at evaluation only
(emoe_eval); plus the dense baseline."""

from emoe.sweep import DENSE, Ablation, main

ABLATION = Ablation("eval_method", {"same": {"eval_method": "same"}, "dense_eval": {"eval_method": "dense"},
                                    "emoe_eval": {"eval_method": "emoe"}, DENSE: {"method": "dense"}},
                    factor="eval_method")

if __name__ == "__main__":
    raise SystemExit(main(ABLATION))
