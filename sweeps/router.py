"""Official-router ablation: the official EMoE router (capacity 1.5, gate noise 1.0, expert dropout 0.1,
load-importance loss 0.01), each of its departures from the idealised EMoE left out in turn, the idealised EMoE,
and the dense baseline. (Tutel's load term needs gate noise, so leaving the noise out leaves the aux loss out too.)"""

from emoe.sweep import DENSE, Ablation, main

OFFICIAL = {"capacity_factor": 1.5, "gate_noise": 1.0, "expert_dropout": 0.1, "aux_loss_weight": 0.01}
ABLATION = Ablation("router", {
    "official": OFFICIAL,
    "no_capacity": {**OFFICIAL, "capacity_factor": None},
    "no_noise_no_aux": {**OFFICIAL, "gate_noise": 0.0, "aux_loss_weight": 0.0},
    "no_dropout": {**OFFICIAL, "expert_dropout": 0.0},
    "no_aux": {**OFFICIAL, "aux_loss_weight": 0.0},
    "idealised": {"capacity_factor": None, "gate_noise": 0.0, "expert_dropout": 0.0, "aux_loss_weight": 0.0},
    DENSE: {"method": "dense"},
}, factor="capacity_factor,gate_noise,expert_dropout,aux_loss_weight")

if __name__ == "__main__":
    raise SystemExit(main(ABLATION))
