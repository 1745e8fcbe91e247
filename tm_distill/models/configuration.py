"""The student's configuration: a Llama config plus per-layer TransPoints and the SSM options.

It subclasses ``LlamaConfig`` so every field a Llama-family teacher has (RoPE parameters, GQA, biases,
tied embeddings) carries over unchanged; the additions are listed in ``TRANSMAMBA_FIELDS``.
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import LlamaConfig

from ..ops import BACKENDS, FEATURE_MAPS

# A TransPoint at or beyond this value means "attention for every position the model will ever see".
ATTENTION_ONLY = 2**31 - 1


@strict
class TransMambaConfig(LlamaConfig):
    """Configuration of a TransMamba student.

    transpoints: one int per layer; tokens at index < P use softmax attention, tokens >= P the SSM
        (0 = pure SSM layer, ``ATTENTION_ONLY`` = pure attention layer).
    transpoint_spec: the spec the TransPoints were made from (shown back to users).
    teacher: where the weights were seeded from; teacher_model_type: its ``model_type``.
    qkv_bias / o_bias: bias on q/k/v and on o (Qwen2 has the former only, Llama both or neither).
    ssm_chunk_size: chunk length of the SSD scan.
    dt_min, dt_max, dt_init_floor: range of the initial step size Δ (Mamba-2 init).
    a_init_min, a_init_max: range of the initial decay magnitude, A = -exp(A_log), A_log = log U[min, max].
    use_z_gate: gate + gated RMSNorm on SSM tokens (a new projection z).
    use_conv, conv_kernel: causal depthwise conv1d on x, B, C (identity init).
    bc_feature_map: activation on B and C ("identity", "silu", "elu1", "relu").
    ssm_c_scale: multiply C by 1/sqrt(head_dim), the softmax scale.
    ssm_rope: use RoPE-rotated q, k as C, B.
    ssm_backend: "auto" (mamba-ssm on CUDA when installed, else the PyTorch reference), "torch", "mamba_ssm".
    calibration: what calibrated seeding fitted and on what data, with the per-layer errors before/after
        (``tm_distill.convert.calibrate``), or None for a student seeded without calibration.
    """

    model_type = "transmamba"

    transpoints: list[int] | None = None
    transpoint_spec: str | None = None
    teacher: str | None = None
    teacher_model_type: str | None = None
    qkv_bias: bool | None = None
    o_bias: bool | None = None
    ssm_chunk_size: int = 64
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    dt_init_floor: float = 1e-4
    a_init_min: float = 1.0
    a_init_max: float = 16.0
    use_z_gate: bool = False
    use_conv: bool = False
    conv_kernel: int = 4
    bc_feature_map: str = "identity"
    ssm_c_scale: bool = False
    ssm_rope: bool = False
    ssm_backend: str = "auto"
    calibration: dict | None = None

    def __post_init__(self, **kwargs):
        if self.qkv_bias is None:
            self.qkv_bias = self.attention_bias
        if self.o_bias is None:
            self.o_bias = self.attention_bias
        super().__post_init__(**kwargs)
        if self.transpoints is None:
            self.transpoints = [ATTENTION_ONLY] * self.num_hidden_layers
        self.transpoints = [int(p) for p in self.transpoints]
        if len(self.transpoints) != self.num_hidden_layers:
            raise ValueError(
                f"transpoints has {len(self.transpoints)} entries but the model has "
                f"{self.num_hidden_layers} layers: give one TransPoint per layer"
            )
        if any(p < 0 for p in self.transpoints):
            raise ValueError(f"transpoints must be >= 0, got {self.transpoints}")
        if self.bc_feature_map not in FEATURE_MAPS:
            raise ValueError(f"bc_feature_map={self.bc_feature_map!r}: choose one of {', '.join(FEATURE_MAPS)}")
        if self.ssm_backend not in BACKENDS:
            raise ValueError(f"ssm_backend={self.ssm_backend!r}: choose one of {', '.join(BACKENDS)}")
        for key in ("ssm_chunk_size", "conv_kernel", "dt_min", "dt_max", "dt_init_floor", "a_init_min", "a_init_max"):
            if not getattr(self, key) > 0:  # a size or a rate: a non-positive one builds no model
                raise ValueError(f"{key}={getattr(self, key)} must be > 0")

    @property
    def min_transpoint(self) -> int:
        return min(self.transpoints)

    def switches(self, layer_idx: int) -> bool:
        """Whether the layer ever runs its SSM (and so needs its Memory Converter state)."""
        return self.transpoints[layer_idx] < ATTENTION_ONLY


__all__ = ["ATTENTION_ONLY", "TransMambaConfig"]
