"""Seed a TransMamba student from a Llama-family teacher through a named weight mapping.

Every teacher tensor has exactly one student home (``map_teacher_key``); the SSM-only parameters are the
student's additions and get their Mamba-2 init. Model-family quirks live in ``ADAPTERS``, keyed on the
teacher's ``config.model_type``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from transformers import PretrainedConfig, PreTrainedModel

from ..errors import UserError
from ..models import TransMambaConfig, TransMambaForCausalLM
from ..models.mixer import SSM_PARAM_PATTERN


class UnsupportedTeacher(UserError, ValueError):
    pass


@dataclass(frozen=True)
class Adapter:
    """What a model family needs to become a student: bias layout and the config checks it must pass."""

    qkv_bias: str  # name of the teacher config field, or "true"/"false"
    o_bias: str
    note: str = ""


ADAPTERS: dict[str, Adapter] = {
    "llama": Adapter(qkv_bias="attention_bias", o_bias="attention_bias", note="Llama 2/3, SmolLM2"),
    "mistral": Adapter(qkv_bias="false", o_bias="false", note="full attention only (no sliding window)"),
    "qwen2": Adapter(qkv_bias="true", o_bias="false", note="full attention only (no sliding window)"),
}

# Teacher key pattern -> student key template; the first match wins, no match is an error.
_KEY_MAP: list[tuple[re.Pattern, str]] = [
    (re.compile(r"^model\.layers\.(\d+)\.self_attn\.([qkvo])_proj\.(weight|bias)$"), r"model.layers.\1.mixer.\2_proj.\3"),
    (re.compile(r"^model\.layers\.(\d+)\.(mlp\.(?:gate|up|down)_proj\.(?:weight|bias))$"), r"model.layers.\1.\2"),
    (re.compile(r"^model\.layers\.(\d+)\.(input_layernorm|post_attention_layernorm)\.weight$"), r"model.layers.\1.\2.weight"),
    (re.compile(r"^model\.(embed_tokens|norm)\.weight$"), r"model.\1.weight"),
    (re.compile(r"^lm_head\.weight$"), "lm_head.weight"),
]

def supported_model_types() -> str:
    return ", ".join(f"{k} ({a.note})" for k, a in ADAPTERS.items())


def map_teacher_key(key: str) -> str:
    """The student parameter a teacher tensor seeds; raises for a tensor the mapping does not know."""
    for pattern, template in _KEY_MAP:
        if pattern.match(key):
            return pattern.sub(template, key)
    raise UnsupportedTeacher(f"teacher tensor {key!r} has no place in a TransMamba student")


def teacher_adapter(cfg: PretrainedConfig) -> Adapter:
    """The ``ADAPTERS`` entry for the teacher's ``model_type``; UnsupportedTeacher for another family or a
    sliding-window model (checked before any weight is loaded)."""
    mt = getattr(cfg, "model_type", None)
    if mt not in ADAPTERS:
        raise UnsupportedTeacher(
            f"teacher model_type {mt!r} is not supported; tm-distill converts Llama-family models: "
            f"{supported_model_types()}"
        )
    if getattr(cfg, "use_sliding_window", False) or (
        mt == "mistral" and getattr(cfg, "sliding_window", None) not in (None, 0)
        and cfg.sliding_window < cfg.max_position_embeddings
    ):
        raise UnsupportedTeacher(f"{mt} teacher uses sliding-window attention, which a TransMamba student lacks")
    return ADAPTERS[mt]


def _flag(cfg: PretrainedConfig, spec: str) -> bool:
    return {"true": True, "false": False}.get(spec, bool(getattr(cfg, spec, False)))


def student_config(
    teacher_config: PretrainedConfig,
    transpoints: list[int],
    transpoint_spec: str | None = None,
    teacher: str | None = None,
    **ssm_options,
) -> TransMambaConfig:
    """The student config: the teacher's Llama fields, its TransPoints and SSM options."""
    adapter = teacher_adapter(teacher_config)
    fields = {f: getattr(teacher_config, f) for f in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings",
        "bos_token_id", "eos_token_id", "pad_token_id",
    )}
    fields["head_dim"] = getattr(teacher_config, "head_dim", None) or (
        teacher_config.hidden_size // teacher_config.num_attention_heads
    )
    fields["rope_parameters"] = dict(teacher_config.rope_parameters)
    fields["mlp_bias"] = bool(getattr(teacher_config, "mlp_bias", False))
    return TransMambaConfig(
        **fields,
        qkv_bias=_flag(teacher_config, adapter.qkv_bias),
        o_bias=_flag(teacher_config, adapter.o_bias),
        transpoints=list(transpoints),
        transpoint_spec=transpoint_spec,
        teacher=teacher,
        teacher_model_type=teacher_config.model_type,
        **ssm_options,
    )


def seed_student(
    teacher: PreTrainedModel,
    transpoints: list[int],
    transpoint_spec: str | None = None,
    teacher_name: str | None = None,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    **ssm_options,
) -> TransMambaForCausalLM:
    """Build a student that shares every teacher weight and adds freshly initialized SSM parameters."""
    cfg = student_config(teacher.config, transpoints, transpoint_spec, teacher_name, **ssm_options)
    dtype = dtype or next(teacher.parameters()).dtype
    with torch.device("meta"):
        student = TransMambaForCausalLM(cfg)
    student = student.to_empty(device=next(teacher.parameters()).device).to(dtype)
    student.model.rotary_emb.__init__(cfg)  # buffers are not parameters: rebuild them off the meta device
    student.model.rotary_emb.to(next(teacher.parameters()).device)
    own = student.state_dict()
    seeded = set()
    for key, tensor in teacher.state_dict().items():
        if key.endswith("rotary_emb.inv_freq") or key.endswith("rotary_emb.original_inv_freq"):
            continue
        target = map_teacher_key(key)
        if target not in own:
            raise UnsupportedTeacher(f"teacher tensor {key!r} maps to {target!r}, which the student lacks")
        if own[target].shape != tensor.shape:
            raise UnsupportedTeacher(f"{key}: teacher shape {tuple(tensor.shape)} != student {tuple(own[target].shape)}")
        own[target].copy_(tensor.to(own[target].dtype))
        seeded.add(target)
    if cfg.tie_word_embeddings:
        seeded.add("lm_head.weight")
    generator = torch.Generator().manual_seed(seed)
    for layer in student.model.layers:
        layer.mixer.reset_ssm_parameters(generator)
    unseeded = {k for k in own if k not in seeded and not SSM_PARAM_PATTERN.search(k)}
    if unseeded:
        raise UnsupportedTeacher(f"student tensors left unseeded by the teacher: {sorted(unseeded)[:5]}")
    if cfg.tie_word_embeddings:
        student.tie_weights()
    student.generation_config = teacher.generation_config
    return student.eval() if not teacher.training else student


__all__ = ["ADAPTERS", "UnsupportedTeacher", "map_teacher_key", "seed_student", "student_config",
           "supported_model_types", "teacher_adapter"]
