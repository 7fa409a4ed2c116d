"""The paper's own comparison: one arm per official command of the full fine-tuning script (vanilla fine-tuning as
dense, NoisyTune, GMoE, EMoE, EMoE-learn). Run it with the preset of a setting (``--preset paper``, ``paper-gpt2``,
``paper-bert-large``); ``sweeps/comparison_lora.py`` is the LoRA script's.

The same as `emoe sweep comparison` (the registry: emoe.sweep.ablations)."""

from emoe.sweep import ABLATIONS, main

ABLATION = ABLATIONS["comparison"]

if __name__ == "__main__":
    raise SystemExit(main(ABLATION))
