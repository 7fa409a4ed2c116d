"""One official command as the official script runs it: the preset's own configuration, its seeds x learning rates,
one arm and no baseline (``python sweeps/official.py --preset paper-gpt2-xl-lora-gmoe``).

The same as `emoe sweep official` (the registry: emoe.sweep.ablations)."""

from emoe.sweep import ABLATIONS, main

ABLATION = ABLATIONS["official"]

if __name__ == "__main__":
    raise SystemExit(main(ABLATION))
