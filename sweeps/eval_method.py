"""Where the gain comes from (the paper's Fig. 3): EMoE trained and evaluated as trained (same), EMoE trained but
evaluated with every expert on (dense_eval), and dense training evaluated as EMoE, routing on at evaluation only
(emoe_eval); plus the dense baseline.

The same as `emoe sweep eval_method` (the registry: emoe.sweep.ablations)."""

from emoe.sweep import ABLATIONS, main

ABLATION = ABLATIONS["eval_method"]

if __name__ == "__main__":
    raise SystemExit(main(ABLATION))
