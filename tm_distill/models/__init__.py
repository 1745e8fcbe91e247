"""Student model: config, mixer, hybrid causal LM and its cache."""

from .cache import LayerState, TransMambaCache
from .configuration import ATTENTION_ONLY, TransMambaConfig
from .mixer import TransMambaMixer
from .modeling import TransMambaForCausalLM, TransMambaModel

__all__ = [
    "ATTENTION_ONLY",
    "LayerState",
    "TransMambaCache",
    "TransMambaConfig",
    "TransMambaForCausalLM",
    "TransMambaMixer",
    "TransMambaModel",
]
