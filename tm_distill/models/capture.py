"""Teacher activations (for calibration, planning, the layer-parallel stages and the eval), and the two mixing
matrices the matrix stage compares.

``capture_teacher`` runs the frozen teacher once under ``no_grad`` and records, per requested layer l, the
input of its attention block (the output of ``input_layernorm``) and the attention block's output (before the
residual add), through forward hooks that a context manager always removes. The forward stops after the
last requested layer: nothing past it is needed.

``teacher_attention_matrix`` recomputes layer l's softmax attention from that input (RoPE with transformers'
own ``apply_rotary_pos_emb``, GQA repeat, scale 1/sqrt(d), causal, fp32). ``ssm_mixing_matrix`` materializes
the student's SSM on the same input: ``M[t, s] = exp(sum_{s<r<=t} A dt_r) (C_t . B_s) dt_s`` for s <= t, so that
``y_t = sum_s M[t, s] x_s + D x_t`` is the SSM output (before the optional z gate). Rows t >= P of the hybrid
mixer see every column s <= t: the Memory Converter folds the attention prefix into the state.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb


@dataclass
class TeacherActivations:
    """What one teacher forward recorded.

    attn_inputs[l]: (b, t, H) output of layer l's input_layernorm (the attention block's input).
    attn_outputs[l]: (b, t, H) layer l's attention output, before the residual add.
    residuals[l]: (b, t, H) the residual stream entering layer l (only when asked for).
    head_outputs[l]: (b, t, n_q * d) the input of layer l's o_proj: each head's attention output, before the
        heads are mixed (only when asked for).
    position_embeddings: (cos, sin), each (1, t, head_dim), the teacher's RoPE for positions 0..t-1.
    """

    attn_inputs: dict[int, Tensor] = field(default_factory=dict)
    attn_outputs: dict[int, Tensor] = field(default_factory=dict)
    residuals: dict[int, Tensor] = field(default_factory=dict)
    head_outputs: dict[int, Tensor] = field(default_factory=dict)
    position_embeddings: tuple[Tensor, Tensor] | None = None


class _StopForward(Exception):
    """Raised by a hook once the last needed activation is recorded, to skip the rest of the model."""


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a Llama-family causal LM (teacher) or of a TransMamba student."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(
            f"{type(model).__name__} has no `model.layers`: the layer-parallel stages need a Llama-family causal "
            "LM (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM) or a TransMambaForCausalLM"
        )
    return layers


def check_layers(layers: Iterable[int], num_layers: int) -> list[int]:
    out = sorted({int(i) for i in layers})
    bad = [i for i in out if not 0 <= i < num_layers]
    if bad:
        raise ValueError(f"layer index {bad[0]} is out of range: the model has layers 0..{num_layers - 1}")
    return out


@contextlib.contextmanager
def record_activations(
    model: nn.Module, layers: Iterable[int], *, attention: bool = True, residual: bool = False,
    heads: bool = False, stop_after: int | None = None,
) -> Iterator[TeacherActivations]:
    """Hook ``model``'s layers for one block; the hooks are removed on exit, whatever happens.

    attention: record attention inputs/outputs of ``layers``; residual: record the residual stream entering
    them; heads: record the per-head attention outputs (the input of o_proj). stop_after: raise
    ``_StopForward`` once that layer's attention output is recorded (the caller catches it;
    ``capture_teacher`` does).
    """
    blocks = decoder_layers(model)
    wanted = check_layers(layers, len(blocks))
    acts = TeacherActivations()
    handles = []

    def save_norm(i):
        return lambda mod, args, out: acts.attn_inputs.__setitem__(i, out.detach())

    def save_attn(i):
        def hook(mod, args, out):
            acts.attn_outputs[i] = (out[0] if isinstance(out, tuple) else out).detach()
            if stop_after == i:
                raise _StopForward

        return hook

    def save_residual(i):
        def hook(mod, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            acts.residuals[i] = hidden.detach()

        return hook

    def save_heads(i):
        return lambda mod, args: acts.head_outputs.__setitem__(i, args[0].detach())

    try:
        for i in wanted:
            block = blocks[i]
            attn = getattr(block, "self_attn", None) or getattr(block, "mixer", None)
            if residual:
                handles.append(block.register_forward_pre_hook(save_residual(i), with_kwargs=True))
            if attention:
                handles.append(block.input_layernorm.register_forward_hook(save_norm(i)))
                handles.append(attn.register_forward_hook(save_attn(i)))
            if heads:
                handles.append(attn.o_proj.register_forward_pre_hook(save_heads(i)))
        yield acts
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def capture_teacher(
    teacher: nn.Module, input_ids: Tensor, layers: Iterable[int], *, residual: bool = False, heads: bool = False,
    position_ids: Tensor | None = None,
) -> TeacherActivations:
    """Run the frozen teacher once and record layers' attention inputs/outputs (residuals, per-head outputs
    if asked).

    input_ids: (b, t) on the teacher's device. Stops after the last requested layer's attention.
    position_ids: (b, t) positions inside each packed document (restarting at 0: transformers then masks
    attention block-causally), or None for 0..t-1. The position embeddings are the teacher's RoPE for them.
    """
    layers = check_layers(layers, len(decoder_layers(teacher)))
    if not layers:
        raise ValueError("capture_teacher needs at least one layer index")
    stop = None if residual else layers[-1]
    with record_activations(teacher, layers, attention=True, residual=residual, heads=heads,
                            stop_after=stop) as acts:
        try:
            teacher.model(input_ids=input_ids, position_ids=position_ids, use_cache=False)
        except _StopForward:
            pass
    missing = [i for i in layers if i not in acts.attn_outputs]
    if missing:
        raise RuntimeError(f"the teacher forward never reached layer {missing[0]}: is it a Llama-family model?")
    any_input = acts.attn_inputs[layers[0]]
    if position_ids is None:
        position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
    acts.position_embeddings = teacher.model.rotary_emb(any_input, position_ids=position_ids)
    return acts


def _heads(heads: slice | None, num_heads: int) -> slice:
    return heads if heads is not None else slice(0, num_heads)


def _rows(rows: slice | None, t: int) -> tuple[int, int]:
    if rows is None:
        return 0, t
    r0, r1, _ = rows.indices(t)
    return r0, r1


def attention_rows(q: Tensor, k: Tensor, scale: float, r0: int, r1: int, same_doc: Tensor | None = None) -> Tensor:
    """Causal softmax probabilities of query rows [r0, r1) over key columns [0, r1), fp32.

    q: (b, h, t, d), k: (b, h, t, d) (after RoPE, GQA already expanded); same_doc: (b, t, t) bool for packed
    documents (a row attends only inside its own document) or None. Returns (b, h, r1 - r0, r1).
    """
    scores = torch.einsum("bhtd,bhsd->bhts", q[:, :, r0:r1].float(), k[:, :, :r1].float()) * scale
    allowed = torch.arange(r1, device=q.device)[None, :] <= torch.arange(r0, r1, device=q.device)[:, None]
    allowed = allowed[None, None]
    if same_doc is not None:
        allowed = allowed & same_doc[:, None, r0:r1, :r1]
    return scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)


def ssm_matrix_rows(C: Tensor, B: Tensor, dt: Tensor, log_decay: Tensor, r0: int, r1: int,
                    same_doc: Tensor | None = None) -> Tensor:
    """Rows [r0, r1) (columns [0, r1)) of the SSM mixing matrix ``M[t, s] = exp(sum_{s<r<=t} a_r) (C_t.B_s) dt_s``.

    C, B: (b, h, t, n) fp32; dt: (b, h, t) fp32; log_decay: (b, h, t) the per-token ``a = A dt``;
    same_doc: (b, t, t) bool or None (a packed row sees only its own document: the state resets between).
    The decay is a difference of running sums, so a block of rows never needs the whole (t, t) matrix.
    Returns (b, h, r1 - r0, r1), zero above the diagonal.
    """
    cum = torch.cumsum(log_decay[..., :r1], dim=-1)  # (b, h, r1)
    seg = cum[..., r0:r1, None] - cum[..., None, :]  # (b, h, R, r1): sum_{s<r<=t} a_r for s <= t
    allowed = torch.arange(r1, device=C.device)[None, :] <= torch.arange(r0, r1, device=C.device)[:, None]
    allowed = allowed[None, None]
    if same_doc is not None:
        allowed = allowed & same_doc[:, None, r0:r1, :r1]
    decay = torch.exp(seg.masked_fill(~allowed, float("-inf")))
    return torch.einsum("bhtn,bhsn->bhts", C[:, :, r0:r1], B[:, :, :r1]) * decay * dt[:, :, None, :r1]


def teacher_qk(attn: nn.Module, hidden: Tensor, position_embeddings: tuple[Tensor, Tensor],
               heads: slice | None = None) -> tuple[Tensor, Tensor, float]:
    """A Llama attention block's RoPE'd q (b, h, t, d) and GQA-expanded k (b, h, t, d) in fp32, and its scale."""
    b, t, _ = hidden.shape
    d = attn.head_dim
    nq = attn.q_proj.out_features // d
    nkv = attn.k_proj.out_features // d
    hs = _heads(heads, nq)
    q = attn.q_proj(hidden).view(b, t, nq, d).transpose(1, 2)[:, hs]
    k = attn.k_proj(hidden).view(b, t, nkv, d).transpose(1, 2)
    cos, sin = position_embeddings
    q, k = apply_rotary_pos_emb(q.float(), k.float(), cos.float(), sin.float())
    kv_of_q = torch.arange(nq, device=hidden.device)[hs] // (nq // nkv)  # GQA: query head -> its kv head
    return q, k[:, kv_of_q], float(getattr(attn, "scaling", d**-0.5))


def teacher_attention_matrix(
    attn: nn.Module, hidden: Tensor, position_embeddings: tuple[Tensor, Tensor], heads: slice | None = None,
    rows: slice | None = None,
) -> Tensor:
    """Softmax attention probabilities of a Llama attention block (or a student mixer's attention), fp32.

    attn: the layer's ``self_attn`` (q_proj, k_proj, head_dim, scaling). hidden: (b, t, H) its input.
    position_embeddings: (cos, sin) each (1 or b, t, head_dim). heads: a slice of the query heads (chunking);
    rows: a slice of query rows [r0, r1) (columns then stop at r1).
    Returns (b, n_heads_in_slice, r1 - r0, r1) — (b, h, t, t) by default — causal, rows summing to 1.
    """
    q, k, scale = teacher_qk(attn, hidden, position_embeddings, heads)
    return attention_rows(q, k, scale, *_rows(rows, hidden.shape[1]))


def ssm_matrix_inputs(mixer: nn.Module, hidden: Tensor, position_embeddings: tuple[Tensor, Tensor],
                      heads: slice | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The mixer's C, B (b, h, t, n), dt and log-decay A dt (b, h, t), fp32 and differentiable."""
    nq, nkv = mixer.num_heads, mixer.num_kv_heads
    _, dt, A, B, C = mixer.ssm_inputs(hidden, *mixer.project(hidden), position_embeddings)
    hs = _heads(heads, nq)
    kv_of_q = torch.arange(nq, device=hidden.device)[hs] // (nq // nkv)
    C = C[:, :, hs].float().transpose(1, 2)
    B = B.float()[:, :, kv_of_q].transpose(1, 2)
    dt = dt[:, :, hs].transpose(1, 2)  # fp32
    return C, B, dt, dt * A[hs].view(1, -1, 1)


def ssm_mixing_matrix(
    mixer: nn.Module, hidden: Tensor, position_embeddings: tuple[Tensor, Tensor], heads: slice | None = None,
    rows: slice | None = None,
) -> Tensor:
    """The student's materialized SSM mixing matrix for one layer, fp32 and differentiable.

    mixer: a TransMambaMixer; hidden: (b, t, H) its input; heads: a slice of the query heads; rows: a slice
    of rows [r0, r1). Returns M (b, n_heads_in_slice, r1 - r0, r1) — (b, h, t, t) by default — with
    ``M[t, s] = exp(sum_{s<r<=t} A dt_r) (C_t . B_s) dt_s`` for s <= t and 0 above, so ``y = M x + D x``
    reproduces the scan (before the z gate, if any).
    """
    C, B, dt, log_decay = ssm_matrix_inputs(mixer, hidden, position_embeddings, heads)
    return ssm_matrix_rows(C, B, dt, log_decay, *_rows(rows, hidden.shape[1]))


__all__ = ["TeacherActivations", "attention_rows", "capture_teacher", "check_layers", "decoder_layers",
           "record_activations", "ssm_matrix_inputs", "ssm_matrix_rows", "ssm_mixing_matrix",
           "teacher_attention_matrix", "teacher_qk"]
