"""Student model: config, mixer, hybrid causal LM and its cache, and ``use_transpoints`` to switch its schedule."""

from .cache import LayerState, TransMambaCache
from .configuration import ATTENTION_ONLY, TransMambaConfig
from .mixer import TransMambaMixer
from .modeling import TransMambaForCausalLM, TransMambaModel, use_transpoints

__all__ = [
    "ATTENTION_ONLY",
    "LayerState",
    "TransMambaCache",
    "TransMambaConfig",
    "TransMambaForCausalLM",
    "TransMambaMixer",
    "TransMambaModel",
    "use_transpoints",
]
