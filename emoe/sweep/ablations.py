"""The ablations that ship with emoe, by name: ``emoe sweep <name>`` runs one from any directory (``sweeps/*.py`` in
a checkout are one-line examples of the same). A crossing of any factors needs no entry here: ``emoe sweep
--factor KNOB=V1,V2 ...`` or ``emoe sweep design.toml`` (``crossing``)."""

from __future__ import annotations

from fractions import Fraction

from emoe.sweep.design import COMMANDS, DENSE, Ablation, check_factors, crossing_from_file, parse_factor
from emoe.usage import Parser

# The official EMoE router (capacity 1.5, gate noise 1.0, expert dropout 0.1, load-importance loss 0.01).
OFFICIAL_ROUTER = {"capacity_factor": 1.5, "gate_noise": 1.0, "expert_dropout": 0.1, "aux_loss_weight": 0.01}
# N in {4, 8, 16, 32, 64} x k/N in {1/8, 1/4, 1/2}, valid (integer k >= 1) pairs only.
EXPERT_PAIRS = [(n, int(n * r)) for n in (4, 8, 16, 32, 64) for r in (Fraction(1, 8), Fraction(1, 4), Fraction(1, 2))
                if (n * r).denominator == 1]

ABLATIONS: dict[str, Ablation] = {
    # how the FFN's neurons are split into experts (plus the dense baseline)
    "clustering": Ablation.over("clustering", ["constrained", "kmeans", "hierarchical", "spectral", "random",
                                               "contiguous"]),
    # how each expert's gate vector is derived
    "gating": Ablation.over("gate", ["avg_keys", "centroid", "avg_values", "random", "learned", "learned_avg_keys"],
                            name="gating"),
    # pre-trained vs random weights, each dense and EMoE (the dense arms are the baselines)
    "pretraining": Ablation("pretraining", {f"{init}-{method}": {"init": init, "method": method}
                                            for init in ("pretrained", "random") for method in ("dense", "emoe")},
                            factor="init"),
    # expert count N and top-k
    "experts": Ablation("experts", {**{f"N{n}-k{k}": {"num_experts": n, "top_k": k} for n, k in EXPERT_PAIRS},
                                    DENSE: {"method": "dense"}}, factor="num_experts,top_k"),
    # the official router, each of its departures from the idealised EMoE left out in turn (Tutel's load term needs
    # gate noise, so leaving the noise out leaves the aux loss out too), the idealised EMoE, and the dense baseline
    "router": Ablation("router", {
        "official": OFFICIAL_ROUTER,
        "no_capacity": {**OFFICIAL_ROUTER, "capacity_factor": None},
        "no_noise_no_aux": {**OFFICIAL_ROUTER, "gate_noise": 0.0, "aux_loss_weight": 0.0},
        "no_dropout": {**OFFICIAL_ROUTER, "expert_dropout": 0.0},
        "no_aux": {**OFFICIAL_ROUTER, "aux_loss_weight": 0.0},
        "idealised": {"capacity_factor": None, "gate_noise": 0.0, "expert_dropout": 0.0, "aux_loss_weight": 0.0},
        DENSE: {"method": "dense"},
    }, factor="capacity_factor,gate_noise,expert_dropout,aux_loss_weight"),
    # the paper's Fig. 3: the top-k experts, the k lowest-scoring ones, all but the top k
    "selection": Ablation.over("expert_selection", ["top", "bottom", "not_top"], name="selection"),
    # the paper's Fig. 3: EMoE evaluated as trained, with every expert on (dense_eval), and dense training evaluated
    # as EMoE (emoe_eval); plus the dense baseline
    "eval_method": Ablation("eval_method", {"same": {"eval_method": "same"}, "dense_eval": {"eval_method": "dense"},
                                            "emoe_eval": {"eval_method": "emoe"}, DENSE: {"method": "dense"}},
                            factor="eval_method"),
    # dense-to-MoE constructions (MoEfication's co-activation graph, CMoE's split with and without its shared
    # experts, LLaMA-MoE's gradient split) beside EMoE's key clustering and the random split, every one routed by avg-k
    "constructions": Ablation("constructions", {"constrained": {"clustering": "constrained"},
                                                "coactivation": {"clustering": "coactivation"},
                                                "cmoe": {"clustering": "cmoe"},
                                                "gradient": {"clustering": "gradient"},
                                                "cmoe_shared": {"clustering": "cmoe", "shared_experts": 1},
                                                "random": {"clustering": "random"}, DENSE: {"method": "dense"}},
                              factor="clustering,shared_experts"),
    # routers on EMoE's experts: avg-k, EMoE-learn's cosine router, MoEfication's MLP predictor, CMoE's analytic
    # router, D2DMoE's norm regression (top-k, and with its dynamic k)
    "routers": Ablation("routers", {**{g: {"gate": g} for g in ("avg_keys", "learned", "mlp", "analytic",
                                                                 "norm_regression")},
                                    "norm_regression_dynamic": {"gate": "norm_regression",
                                                                "expert_selection": "dynamic"},
                                    DENSE: {"method": "dense"}}, factor="gate,expert_selection"),
    # does input-dependent routing beat keeping as many neurons? the routed arm, the all-experts control (k = N), the
    # static pruning control and the matched random mask (same neurons per token), and the dense baseline
    "controls": Ablation("controls", {"routed": {"expert_selection": "top"},
                                      "all_experts": {"expert_selection": "top", "top_k": "=num_experts"},
                                      "static": {"expert_selection": "static"},
                                      "random_mask": {"expert_selection": "random"}, DENSE: {"method": "dense"}},
                         factor="expert_selection"),
    # sources of variance: the paper's EMoE with its clustering seed (the partition: k-means-constrained's restarts
    # move most of it) crossed with the data order's seed; the training seed (initialisation, dropout) and the
    # learning rate are the grid's (--seeds, --learning-rates): every report then splits each arm's spread among
    # the four (emoe.analysis.variance); no baseline (the dense model has no partition)
    "variance": Ablation("variance", {f"c{c}-d{d}": {"cluster_seed": c, "data_seed": d}
                                      for c in (0, 1, 2) for d in (0, 1, 2)}, factor="cluster_seed,data_seed"),
    # one official command as the official script runs it (its seeds x learning rates, one arm, no baseline):
    # emoe sweep official --preset paper-gmoe (any preset: its own configuration)
    "official": Ablation("official", {"official": {}}, factor=""),
    # the paper's own comparison, one arm per official command of the full fine-tuning script (vanilla fine-tuning
    # as dense, NoisyTune, GMoE, EMoE, EMoE-learn): with --preset paper (BERT-base), paper-gpt2, paper-bert-large
    "comparison": Ablation("comparison", dict(COMMANDS["full"]), factor="method,gate",
                           requires={"regime": ("full",), "optimizer": ("adamw",)},
                           hint=" (the LoRA presets' comparison is the ablation comparison_lora, the vision "
                                "presets' comparison_vision)"),
    # the same for the LoRA script (vanilla LoRA as dense, LoRA + Block, GMoE, EMoE, EMoE-learn): with --preset
    # paper-gpt2-xl-lora or paper-bert-large-lora
    # the vision README's three commands (dense ViT, GMoE, EMoE) on DomainBed: with --preset paper-vit-s, paper-vit-b
    # or vision-demo
    "comparison_vision": Ablation("comparison_vision", dict(COMMANDS["vision"]), factor="method,gate,num_experts,"
                                  "top_k,expert_repeat,layers", requires={"optimizer": ("adam",)},
                                  hint=" (DomainBed's Adam: the text presets' comparisons are comparison and "
                                       "comparison_lora)"),
    "comparison_lora": Ablation("comparison_lora", dict(COMMANDS["lora"]), factor="method,gate,regime",
                                requires={"regime": ("lora", "lora_block", "lora_gates")},
                                hint=" (the full fine-tuning presets' comparison is the ablation comparison)"),
}

CROSSING_HELP = """A crossing of any factors, declared on the command line or in a design file; no code to write:

    emoe sweep --factor clustering=constrained,kmeans --factor gate=avg_keys,centroid [sweep flags]
    emoe sweep my_design.toml [sweep flags]

One arm per combination of the factors' values (named by its values joined with ``+``, e.g. ``kmeans+centroid``),
plus the dense baseline arm (``--no-baseline`` leaves it out). A design file is TOML::

    name = "clustering-x-gate"          # optional: the experiment is emoe-<name>
    baseline = true                     # optional
    [factors]
    clustering = ["constrained", "kmeans"]
    gate = ["avg_keys", "centroid"]
    layers = [[10], [-2, -1]]

An invalid combination (e.g. top_k above num_experts) is refused before Ray starts, naming the arm and its knobs.
"""


def crossing(argv: list[str], design_file: str | None = None) -> tuple[Ablation, list[str]]:
    """The crossing that ``--factor`` flags (or ``design_file``, or ``--design FILE``) declare, and the other
    flags. ``ValueError`` (one line) when none is declared or a knob is named twice."""
    p = Parser(add_help=False)
    p.add_argument("--factor", action="append", default=[])
    p.add_argument("--design", default=design_file)
    p.add_argument("--name")
    p.add_argument("--no-baseline", action="store_true")
    known, rest = p.parse_known_args(argv)
    if known.design and known.factor:
        raise ValueError("--design and --factor both given; declare the factors in one place")
    name, baseline = known.name, not known.no_baseline
    if known.design:
        factors, file_name, file_baseline = crossing_from_file(known.design)
        name, baseline = name or file_name, baseline and file_baseline
    else:
        factors = dict(parse_factor(f) for f in known.factor)
        if len(factors) != len(known.factor):
            raise ValueError("--factor names a knob twice; give each knob's values in one --factor")
    if not factors:
        if "--resume" in rest:  # the sweep's own design is read from its directory
            return Ablation(name or "crossing", {DENSE: {"method": "dense"}}, ""), rest
        if "-h" in rest or "--help" in rest:
            print(CROSSING_HELP)
            return Ablation(name or "crossing", {DENSE: {"method": "dense"}}, ""), rest
        raise ValueError("declare the crossing: --factor KNOB=V1,V2 (repeatable) or a design file FILE.toml")
    return Ablation.cross(check_factors(factors), name=name, baseline=baseline), rest
