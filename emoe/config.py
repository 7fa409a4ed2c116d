"""EmoeConfig: every construction choice of an EMoE model, validated against the registries."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar

INITS = ("pretrained", "random")
# emoe: the paper's conversion; dense: the baseline; gmoe: GMoE (the official --gate_type cosine_top --expert_repeat R:
# each expert its own copy of R of the partition's clusters, behind a router); noisytune: the dense model with
# NoisyTune's noise (emoe.hparams' noise_tuning) added before training.
METHODS = ("emoe", "dense", "gmoe", "noisytune")
CONVERTING = ("emoe", "gmoe")  # the methods that convert blocks
EXPERT_BIASES = ("shared", "per_expert")
MLP_OUTPUT_DROPOUTS = ("keep", "official")


def check_fields(cls, data: dict[str, Any], what: str) -> None:
    """Refuse keys of ``data`` that are not fields of the dataclass ``cls``, naming the valid ones."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; valid fields: {', '.join(sorted(names))}")


def check_choice(kind: str, value: Any, choices) -> None:
    """Raise a one-line ``ValueError`` naming the valid choices when ``value`` is not one of them."""
    if value not in choices:
        raise ValueError(f"unknown {kind} {value!r}; valid choices: {', '.join(map(str, choices))}")


@dataclasses.dataclass(frozen=True)
class Interval:
    """The valid values of a numeric setting: from ``low`` to ``high`` (None: unbounded), each bound included unless
    ``open_low`` / ``open_high``. ``str`` is how errors and ``--help`` state it: ``>= 1``, ``> 0``, ``in [0, 1)``."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def __contains__(self, value) -> bool:
        lo, hi = self.low, self.high
        return ((lo is None or (value > lo if self.open_low else value >= lo))
                and (hi is None or (value < hi if self.open_high else value <= hi)))

    def __str__(self) -> str:
        lo, hi = (f"{b:g}" if isinstance(b, float) else str(b) for b in (self.low, self.high))
        if self.high is None:
            return f"{'>' if self.open_low else '>='} {lo}"
        if self.low is None:
            return f"{'<' if self.open_high else '<='} {hi}"
        return f"in {'(' if self.open_low else '['}{lo}, {hi}{')' if self.open_high else ']'}"

    def check(self, name: str, value, none: str | None = None) -> None:
        """``ValueError`` naming the setting, its value and this range when ``value`` lies outside; ``none``: what
        None would mean where it is allowed (added to the message)."""
        if value not in self:
            alternative = "" if none is None else f" (or none{': ' + none if none else ''})"
            raise ValueError(f"{name}={value} must be {self}{alternative}")


@dataclasses.dataclass(frozen=True)
class EmoeConfig:
    """How one model is turned into emergent experts (or left dense).

    Args:
        init: ``pretrained`` weights or a ``random`` initialisation of the same architecture.
        method: ``emoe`` converts the chosen blocks; ``dense`` is the baseline (no conversion); ``gmoe`` turns them
            into GMoE layers (``emoe.gmoe``: each expert its own trainable copy of ``expert_repeat`` clusters);
            ``noisytune`` is the dense model, perturbed before training (the trial's ``noise_tuning``).
        clustering: key of ``emoe.CLUSTERING``: how a layer's neurons are split into experts.
        gate: key of ``emoe.GATES``: how each expert's gate vector is derived.
        num_experts: N, experts per converted layer.
        top_k: experts kept per token.
        layers: block indices to convert; negative counts from the end (default: the last two).
        seed: the trial seed: seeds random gates (and clustering when ``cluster_seed='trial'``).
        cluster_seed: the clustering's seed: an integer (default 0, the official ``random_state=0``: one partition
            for every trial seed), or ``'trial'`` (re-clustered with each trial's ``seed``).
        capacity_factor: ``None``: exact routing, nothing dropped; else each expert takes at most
            ``top_k * int(capacity_factor * ceil(T / N))`` of a batch's T token positions (official: 1.5).
        gate_noise: training noise on the gate logits, ``gate_noise * randn / N`` (official: 1.0).
        expert_dropout: dropout on the experts' pre-activations, before the activation, in training (official: 0.1).
        aux_loss_weight: weight of Tutel's load-importance loss, for every gate (official: 0.01; needs gate_noise).
        expert_selection: ``top`` (the paper), ``bottom`` (the k lowest-scoring experts), ``not_top`` (all but the
            top k); the controls of the same compute as ``top``: ``static`` (every token the same k experts, the
            most often selected on a calibration set: a pruning control) and ``random`` (k experts drawn uniformly
            per token, independent of the input); ``dynamic``: D2DMoE's dynamic k, every expert scoring at least
            ``(1 - dynamic_tau)`` x the token's best (gates with non-negative scores: ``norm_regression``,
            ``analytic``; ``top_k`` is then unused).
        expert_bias: ``shared``: the dense layer's one output bias, each token keeping its experts' ``bias / n``
            shares; ``per_expert`` (official): each expert its own trainable copy of ``bias / n`` (equal at
            conversion, free to drift apart in training).
        shared_experts: CMoE's shared experts: experts 0..S-1 hold the neurons most often active on the calibration
            set, are always on and never routed; the gate chooses ``top_k`` of the other ``N - S``.
        dynamic_tau: D2DMoE's tau for ``expert_selection='dynamic'``, in (0, 1]: 1 keeps every expert scoring above
            0, smaller values fewer (D2DMoE evaluates 0.1 .. 1; default 0.5: on the demo, MiniLM keeps about 40% of
            the neurons, against 93% at 0.9).
        expert_repeat: GMoE's (the official ``--expert_repeat``; other methods ignore it): expert i holds the
            neurons of clusters i, i+1, ..., i+R-1 (mod N), so that ``expert_repeat = num_experts`` makes every
            expert a full copy of the FFN.
        mlp_output_dropout: ``keep``: a converted block keeps its FFN's output dropout; ``official``: as the official
            conversion, which replaces GPT-2's whole MLP and so loses its output dropout (``resid_pdrop``); BERT's
            output dropout lies outside what the official code replaces and is kept either way.
    """

    init: str = "pretrained"
    method: str = "emoe"
    clustering: str = "constrained"
    gate: str = "avg_keys"
    num_experts: int = 16
    top_k: int = 4
    layers: tuple[int, ...] = (-2, -1)
    seed: int = 0
    cluster_seed: int | str = 0
    capacity_factor: float | None = None
    gate_noise: float = 0.0
    expert_dropout: float = 0.0
    aux_loss_weight: float = 0.0
    expert_selection: str = "top"
    expert_bias: str = "shared"
    mlp_output_dropout: str = "keep"
    expert_repeat: int = 1
    shared_experts: int = 0
    dynamic_tau: float = 0.5

    # The valid range of each numeric field (top_k also at most num_experts); emoe.hparams shows them in --help.
    RANGES: ClassVar[dict[str, Interval]] = {
        "num_experts": Interval(1), "top_k": Interval(1), "seed": Interval(0, 2 ** 32 - 1),
        "cluster_seed": Interval(0, 2 ** 32 - 1), "capacity_factor": Interval(0, open_low=True),
        "gate_noise": Interval(0), "expert_dropout": Interval(0, 1, open_high=True), "aux_loss_weight": Interval(0),
        "expert_repeat": Interval(1), "shared_experts": Interval(0),
        "dynamic_tau": Interval(0, 1, open_low=True)}

    def __post_init__(self):
        from emoe.clustering import CLUSTERING
        from emoe.gating import GATES
        from emoe.routing import SELECTIONS

        object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))
        check_choice("init", self.init, INITS)
        check_choice("method", self.method, METHODS)
        check_choice("clustering", self.clustering, tuple(CLUSTERING))
        check_choice("gate", self.gate, tuple(GATES))
        check_choice("expert_selection", self.expert_selection, SELECTIONS)
        check_choice("expert_bias", self.expert_bias, EXPERT_BIASES)
        check_choice("mlp_output_dropout", self.mlp_output_dropout, MLP_OUTPUT_DROPOUTS)
        if self.cluster_seed != "trial":
            if isinstance(self.cluster_seed, bool) or not isinstance(self.cluster_seed, int):
                raise ValueError(f"cluster_seed must be an integer or 'trial', got {self.cluster_seed!r}")
        for name in ("num_experts", "top_k", "seed", "expert_repeat", "shared_experts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        self.RANGES["num_experts"].check("num_experts", self.num_experts)
        if not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"top_k={self.top_k} must be between 1 and num_experts={self.num_experts}")
        if not self.layers:
            raise ValueError("layers is empty; give at least one block index (negative counts from the end)")
        if self.expert_selection == "not_top" and self.top_k == self.num_experts:
            raise ValueError(f"expert_selection='not_top' keeps num_experts - top_k experts: top_k={self.top_k} "
                             f"must be below num_experts={self.num_experts}")
        for name, valid in self.RANGES.items():  # capacity_factor None: exact routing; cluster_seed 'trial'
            value = getattr(self, name)
            if value is not None and value != "trial":
                valid.check(name, value, none="exact routing" if name == "capacity_factor" else None)
        if self.shared_experts:
            if self.top_k > self.num_experts - self.shared_experts:
                raise ValueError(f"top_k={self.top_k} must be at most the routed experts, num_experts - "
                                 f"shared_experts = {self.num_experts - self.shared_experts}")
            if self.method == "gmoe" or self.expert_bias == "per_expert" or self.expert_selection == "not_top":
                raise ValueError("shared_experts (always on, never routed) combine with method emoe, expert_bias "
                                 "shared and a selection of k experts; got "
                                 f"method={self.method}, expert_bias={self.expert_bias}, "
                                 f"expert_selection={self.expert_selection}")
        if self.method == "gmoe" and self.expert_selection == "static":
            raise ValueError("expert_selection='static' (the pruning control) keeps a fixed part of one FFN; GMoE's "
                             "experts are copies: use method emoe")
        if self.method == "gmoe" and self.expert_repeat > self.num_experts:
            raise ValueError(f"expert_repeat={self.expert_repeat} must be at most num_experts={self.num_experts} "
                             "(expert i takes clusters i..i+R-1 mod N; R = N already makes every expert the whole FFN)")
        if self.expert_selection == "dynamic":
            from emoe.gating import GATES as gates

            nonnegative = [name for name, gate in gates.items() if gate.nonnegative]
            if not gates[self.gate].nonnegative:
                raise ValueError(f"expert_selection='dynamic' (D2DMoE's dynamic k) thresholds non-negative scores: "
                                 f"gate {self.gate!r} can score below 0; valid gates: {', '.join(nonnegative)}")
            if self.method != "emoe" or self.capacity_factor is not None or self.expert_bias == "per_expert" \
                    or self.aux_loss_weight:
                raise ValueError("expert_selection='dynamic' keeps a variable number of experts per token: it "
                                 "combines with method emoe, exact routing, expert_bias shared and no aux loss; got "
                                 f"method={self.method}, capacity_factor={self.capacity_factor}, "
                                 f"expert_bias={self.expert_bias}, aux_loss_weight={self.aux_loss_weight}")
        if self.aux_loss_weight and not self.gate_noise:
            raise ValueError(f"aux_loss_weight={self.aux_loss_weight} needs gate_noise > 0 (the load term of Tutel's "
                             "load-importance loss is scaled by the noise; official: gate_noise 1.0)")

    @property
    def converts(self) -> bool:
        """Whether this method converts blocks (emoe, gmoe) or leaves the model dense (dense, noisytune)."""
        return self.method in CONVERTING

    @property
    def partition_seed(self) -> int:
        """The seed the clustering uses: ``cluster_seed``, or the trial ``seed`` when it is ``'trial'``."""
        return self.seed if self.cluster_seed == "trial" else int(self.cluster_seed)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layers"] = list(self.layers)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EmoeConfig":
        check_fields(cls, d, "EmoeConfig field(s)")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "EmoeConfig":
        return cls.from_dict(json.loads(text))
