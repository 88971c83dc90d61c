"""Semi-Inf-Net: pseudo labels for unlabelled slices by randomly selected propagation."""

from .finetune import train_round, with_initial_weights
from .propagation import SemiInfNetPropagation
from .pseudo import pseudo_datalist, pseudo_edge, predict_probabilities, to_pseudo_label, write_pseudo_labels
from .state import STATE_FILE, PropagationSettings, PropagationState, random_groups

__all__ = [
    "STATE_FILE",
    "PropagationSettings",
    "PropagationState",
    "SemiInfNetPropagation",
    "predict_probabilities",
    "pseudo_datalist",
    "pseudo_edge",
    "random_groups",
    "to_pseudo_label",
    "train_round",
    "with_initial_weights",
    "write_pseudo_labels",
]
