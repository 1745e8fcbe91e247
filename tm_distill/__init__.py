"""tm-distill: turn a Llama-style Transformer into a TransMamba hybrid and distill it.

Importing the package registers the student's config and model with transformers' Auto classes, so a
converted checkpoint loads with ``AutoModelForCausalLM.from_pretrained`` after ``import tm_distill``.
Nothing else happens on import.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .models import ATTENTION_ONLY, TransMambaCache, TransMambaConfig, TransMambaForCausalLM, TransMambaModel
from .version import __version__

AutoConfig.register(TransMambaConfig.model_type, TransMambaConfig, exist_ok=True)
AutoModel.register(TransMambaConfig, TransMambaModel, exist_ok=True)
AutoModelForCausalLM.register(TransMambaConfig, TransMambaForCausalLM, exist_ok=True)

__all__ = [
    "ATTENTION_ONLY",
    "TransMambaCache",
    "TransMambaConfig",
    "TransMambaForCausalLM",
    "TransMambaModel",
    "__version__",
]
