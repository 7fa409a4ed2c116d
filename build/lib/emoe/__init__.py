"""emoe: ablations of Emergent Mixture-of-Experts (Qiu et al., arXiv 2310.10908) on dense pre-trained transformers."""

from emoe.architectures import ARCHITECTURES
from emoe.clustering import CLUSTERING, cluster_keys, partition
from emoe.config import INITS, METHODS, EmoeConfig
from emoe.convert import DEFAULT_MODEL, aux_loss, convert, emoe_layers, load_model, set_bypass, set_execution
from emoe.gating import GATES
from emoe.layer import EXECUTIONS, EmoeFFN

__all__ = [
    "ARCHITECTURES", "CLUSTERING", "DEFAULT_MODEL", "GATES", "INITS", "METHODS", "EmoeConfig", "EmoeFFN",
    "EXECUTIONS", "aux_loss", "cluster_keys", "convert", "emoe_layers", "load_model", "partition", "set_bypass",
    "set_execution",
]
__version__ = "0.1.0"
