"""The activations a student may apply to B (= k) and C (= q) before the scan (``config.bc_feature_map``).

The keys are the valid values of ``bc_feature_map``; the config, the conversion options and the CLI read them
from here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

FEATURE_MAPS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda t: t,
    "silu": F.silu,
    "elu1": lambda t: F.elu(t) + 1.0,  # positive, as linear attention's feature maps
    "relu": F.relu,
}

__all__ = ["FEATURE_MAPS"]
