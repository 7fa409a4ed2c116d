"""The paper's LoRA comparison: one arm per official command of the LoRA script (vanilla LoRA as dense, LoRA +
Block, GMoE, EMoE, EMoE-learn). Run it with ``--preset paper-gpt2-xl-lora`` or ``paper-bert-large-lora``.

The same as `emoe sweep comparison_lora` (the registry: emoe.sweep.ablations)."""

from emoe.sweep import ABLATIONS, main

ABLATION = ABLATIONS["comparison_lora"]

if __name__ == "__main__":
    raise SystemExit(main(ABLATION))
