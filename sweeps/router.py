"""Official-router ablation: the official EMoE router (capacity 1.5, gate noise 1.0, expert dropout 0.1,
load-importance loss 0.01), each of its departures from the idealised EMoE left out in turn, the idealised EMoE,
and the dense baseline. (Tutel's load term needs gate noise, so leaving the noise out leaves the aux loss out too.)

The same as `emoe sweep router` (the registry: emoe.sweep.ablations)."""

from emoe.sweep import ABLATIONS, main

ABLATION = ABLATIONS["router"]

if __name__ == "__main__":
    raise SystemExit(main(ABLATION))
