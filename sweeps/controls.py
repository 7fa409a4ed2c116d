"""Does input-dependent routing beat keeping as many neurons? The routed arm, the all-experts control (k = N), the
static pruning control and the matched random mask (the routed arm's neurons per token), and the dense baseline.

The same as `emoe sweep controls` (the registry: emoe.sweep.ablations)."""

from emoe.sweep import ABLATIONS, main

ABLATION = ABLATIONS["controls"]

if __name__ == "__main__":
    raise SystemExit(main(ABLATION))
