"""The TransMamba mixer: shared Q/K/V (= C/B/x), attention before the layer's TransPoint, SSM after it.

Token index t < P (the layer's TransPoint) runs causal softmax attention over tokens [0, t]; t >= P runs the
Mamba-2 SSM. The Memory Converter is parameter-free: the SSM state handed to token P is the state of the scan
over tokens [0, P) with B = K, x = V (and their Δ), computed with the scan itself. With a cache the state is
kept current during the attention phase, so the switch costs nothing during decoding.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from ..ops import FEATURE_MAPS, ssd_scan, ssd_state, ssd_update
from ..ops.fused import rotary, use_fused
from .cache import LayerState
from .configuration import TransMambaConfig
from .kv import decode_attention, write_static
from .placement import Placement

# In training the attention prefix changes length with every TransPoint (and every batch when TransPoints are
# sampled): cuDNN's SDPA builds an execution plan per new shape, so the shape-agnostic kernels are preferred.
# An inference prefill takes what the teacher takes (cuDNN first): on an H200 it ran a 2k-token prefill's
# attention in 0.9 ms where the flash kernel took 1.5 ms (profile of 2026-11-26), one plan per prompt length as
# for the teacher. Later calls keep the shape-agnostic kernels: a dynamic cache's decode steps (on-policy
# generation) change the key length every step.
_SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
_SDPA_INFERENCE = [SDPBackend.CUDNN_ATTENTION, *_SDPA_BACKENDS]

# The mixer's own SSM parameters (what it adds to the teacher's attention; no teacher tensor seeds them), by
# their names inside a TransMamba student.
SSM_PARAM_PATTERN = re.compile(
    r"\.mixer\.(dt_proj\.weight|dt_bias|A_log|D|z_proj\.weight|ssm_norm\.weight|conv1d\.(weight|bias))$"
)


class GatedRMSNorm(nn.Module):
    """Mamba-2's gated norm, per head: rmsnorm(y * silu(z)) * weight.  y, z: (batch, seqlen, nheads, headdim)."""

    def __init__(self, head_dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(head_dim))
        self.eps = eps

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        dtype = y.dtype
        y = y.float() * F.silu(z.float())
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight * y.to(dtype)).to(dtype)


class TransMambaMixer(nn.Module):
    """One layer's token mixer. Parameter names q/k/v/o_proj match Llama's, so teacher weights load as is."""

    def __init__(self, config: TransMambaConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.hidden_size = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.scaling = self.head_dim**-0.5
        h, nq, nkv, d = self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim
        self.q_proj = nn.Linear(h, nq * d, bias=config.qkv_bias)
        self.k_proj = nn.Linear(h, nkv * d, bias=config.qkv_bias)
        self.v_proj = nn.Linear(h, nkv * d, bias=config.qkv_bias)
        self.o_proj = nn.Linear(nq * d, h, bias=config.o_bias)
        # SSM-only parameters (the student's additions; see reset_ssm_parameters for their init).
        self.dt_proj = nn.Linear(h, nq, bias=False)
        self.dt_bias = nn.Parameter(torch.empty(nq))
        self.A_log = nn.Parameter(torch.empty(nq))
        self.D = nn.Parameter(torch.empty(nq))
        if config.use_z_gate:
            self.z_proj = nn.Linear(h, nq * d, bias=False)
            self.ssm_norm = GatedRMSNorm(d, eps=config.rms_norm_eps)
        if config.use_conv:
            channels = (2 * nkv + nq) * d
            self.conv1d = nn.Conv1d(channels, channels, config.conv_kernel, groups=channels, bias=True)
        self.feature_map = FEATURE_MAPS[config.bc_feature_map]

    @property
    def transpoint(self) -> int:
        return self.config.transpoints[self.layer_idx]

    @torch.no_grad()
    def reset_ssm_parameters(self, generator: torch.Generator | None = None) -> None:
        """Mamba-2 init for Δ and A, D = 0 (keeps the attention-matched output), identity conv, small W_Δ."""
        cfg, nq = self.config, self.num_heads
        dev = self.A_log.device
        u = torch.rand(nq, generator=generator, device="cpu").to(dev)
        dt = torch.exp(u * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min))
        dt = dt.clamp(min=cfg.dt_init_floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1
        a = torch.rand(nq, generator=generator, device="cpu").to(dev) * (cfg.a_init_max - cfg.a_init_min)
        self.A_log.copy_(torch.log(a + cfg.a_init_min))
        self.D.zero_()
        std = 0.1 / math.sqrt(self.hidden_size)
        self.dt_proj.weight.copy_(torch.randn(self.dt_proj.weight.shape, generator=generator).to(dev) * std)
        if cfg.use_conv:
            self.conv1d.weight.zero_()
            self.conv1d.weight[:, 0, -1] = 1.0
            self.conv1d.bias.zero_()
        if cfg.use_z_gate:
            self.z_proj.weight.copy_(torch.randn(self.z_proj.weight.shape, generator=generator).to(dev) * 0.02)
            self.ssm_norm.weight.fill_(1.0)

    # ----------------------------------------------------------------------------------------------------------
    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        state: LayerState | None = None,
        offset: int = 0,
        attention_mask: torch.Tensor | None = None,
        seq_idx: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        placement: Placement | None = None,
    ) -> torch.Tensor:
        """hidden_states: (batch, seqlen, hidden); tokens are at indices [offset, offset + seqlen).

        attention_mask: (batch, offset + seqlen) with 1 for real tokens and 0 for padding, or None.
        state: this layer's cache entry (updated in place) or None for a cache-free forward.
        seq_idx, position_ids: (batch, seqlen) for packed documents (no cache): the document index of each
            token and its position inside its document; see ``_forward_packed``.
        placement: the model's per-call ``Placement`` (row positions, padding); built from attention_mask
            and offset when not given.
        """
        b, t, _ = hidden_states.shape
        q, k, v = self.project(hidden_states)
        if seq_idx is not None:
            if state is not None or attention_mask is not None:
                raise ValueError("packed documents (seq_idx) take neither a cache nor a padding mask")
            y = self._forward_packed(hidden_states, q, k, v, position_embeddings, seq_idx, position_ids)
            return self.o_proj(y.reshape(b, t, -1))
        if placement is None:
            if state is None and attention_mask is None and offset == 0:
                y = self._forward_full(hidden_states, q, k, v, position_embeddings)
                return self.o_proj(y.reshape(b, t, -1))
            placement = Placement.for_mask(attention_mask, offset, t, hidden_states.device)
        if placement.padded:
            y = self._forward_rows(hidden_states, q, k, v, position_embeddings, state, placement)
        else:
            y = self._forward_split(hidden_states, q, k, v, position_embeddings, state, placement)
        return self.o_proj(y.reshape(b, t, -1))

    def _forward_split(self, hidden_states, q, k, v, position_embeddings, state, where):
        """No padding: this call's tokens [0, n_attn) use attention, [n_attn, t) the SSM. (b, t, nq, d)."""
        t = q.shape[1]
        n_attn = min(max(self.transpoint - where.offset, 0), t)
        parts = []
        if n_attn > 0:
            parts.append(self._attend(q, k, v, position_embeddings, n_attn, state, where))
        if n_attn < t or self._tracks_state(state, where):
            y = self._ssm(hidden_states, q, k, v, position_embeddings, state, where, n_attn, need_y=n_attn < t)
            if n_attn < t:
                parts.append(y)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def _forward_rows(self, hidden_states, q, k, v, position_embeddings, state, where):
        """Padded rows: each token picks attention or SSM by its row position (b, t, nq, d).

        Both are computed for every token of the call when the rows disagree (only around a TransPoint, or
        in a padded prefill); the SSM scans the whole call, padding included with Δ = 0 (a no-op on the
        state), so its state at a row's P is that row's Memory Converter state.
        """
        P = self.transpoint
        need_attn, need_ssm = where.first < P, where.last >= P
        y_attn = self._attend(q, k, v, position_embeddings, q.shape[1], state, where) if need_attn else None
        y_ssm = None
        if need_ssm or self._tracks_state(state, where):
            y_ssm = self._ssm(hidden_states, q, k, v, position_embeddings, state, where, 0, need_y=need_ssm)
        if not need_ssm:
            return y_attn
        if not need_attn:
            return y_ssm
        return torch.where((where.rows < P)[..., None, None], y_attn, y_ssm)

    def _tracks_state(self, state: LayerState | None, where: Placement) -> bool:
        """Whether a cached call keeps the layer's SSM state current: the layer switches to its SSM at a
        position the cache can reach (a static cache of max_length N never reaches a TransPoint >= N, so such
        a layer is attention only for the cache's life and runs no Memory Converter)."""
        if state is None or not self.config.switches(self.layer_idx):
            return False
        return where.max_length is None or self.transpoint < where.max_length

    def project(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The shared projections: q (b, t, nq, d), k and v (b, t, nkv, d), before RoPE."""
        b, t, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(hidden_states).view(b, t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(hidden_states).view(b, t, self.num_kv_heads, self.head_dim)
        return q, k, v

    def _forward_full(self, hidden_states, q, k, v, position_embeddings):
        """Cache-free forward of a whole sequence (training, evaluation): one scan, one attention call.

        Rows t >= P of a scan over the WHOLE sequence (B = K, x = V from token 0) are exactly the hybrid's SSM
        rows: the scan's state at P is the Memory Converter's state. So one scan of fixed length replaces the
        prefix scan + suffix scan pair (no per-TransPoint shapes), and attention covers rows t < P only.
        Returns (batch, seqlen, nq, d).
        """
        t = q.shape[1]
        n_attn = min(self.transpoint, t)
        if n_attn == t:
            return self._attend(q, k, v, position_embeddings, t, None, Placement.for_mask(None, 0, t, q.device))
        y = self.ssm_full(hidden_states, q, k, v, position_embeddings, start=n_attn)
        if n_attn == 0:
            return y
        where = Placement.for_mask(None, 0, t, q.device)
        return torch.cat([self._attend(q, k, v, position_embeddings, n_attn, None, where), y], dim=1)

    def ssm_full(self, hidden_states, q, k, v, position_embeddings, start: int = 0) -> torch.Tensor:
        """The SSM's outputs for rows [start, t) of a whole-sequence scan from token 0 (no cache).

        Equal to the hybrid mixer's rows when start = P (the Memory Converter state is the scan's state at P).
        hidden_states: (b, t, H); q: (b, t, nq, d); k, v: (b, t, nkv, d). Returns (b, t - start, nq, d).
        """
        x, dt, A, B, C = self.ssm_inputs(hidden_states, q, k, v, position_embeddings)
        y = ssd_scan(x, dt, A, B, C, self.config.ssm_chunk_size, D=self.D, backend=self.config.ssm_backend)
        y = y[:, start:]
        if self.config.use_z_gate:
            y = self.ssm_norm(y, self.z_proj(hidden_states[:, start:]).view_as(y))
        return y

    def _forward_packed(self, hidden_states, q, k, v, position_embeddings, seq_idx, position_ids):
        """Several documents in one row: nothing crosses a document boundary, TransPoints count per document.

        Token i uses attention iff position_ids[i] < P (its position inside its document). Attention is
        block-causal; the SSM scans the whole row with ``seq_idx`` resets, which is the Memory Converter for
        every document at once (the state at a document's P is the scan over that document's prefix).
        Returns (batch, seqlen, nq, d).
        """
        P = self.transpoint
        use_attn = position_ids < P  # (b, t)
        y = None
        if bool(use_attn.any()):
            cos, sin = position_embeddings
            q_rot, k_rot = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
            t = q.shape[1]
            causal = torch.tril(torch.ones(t, t, dtype=torch.bool, device=q.device))
            mask = (causal & (seq_idx[:, :, None] == seq_idx[:, None, :]))[:, None]  # (b, 1, t, t)
            y = F.scaled_dot_product_attention(
                q_rot, k_rot, v.transpose(1, 2), attn_mask=mask, scale=self.scaling,
                enable_gqa=self.num_heads != self.num_kv_heads,
            ).transpose(1, 2)
        if not bool(use_attn.all()):
            x, dt, A, B, C = self.ssm_inputs(hidden_states, q, k, v, position_embeddings, seq_idx=seq_idx)
            y_ssm = ssd_scan(
                x, dt, A, B, C, self.config.ssm_chunk_size, D=self.D, seq_idx=seq_idx.to(torch.int32),
                backend=self.config.ssm_backend,
            )
            if self.config.use_z_gate:
                y_ssm = self.ssm_norm(y_ssm, self.z_proj(hidden_states).view_as(y_ssm))
            y = y_ssm if y is None else torch.where(use_attn[..., None, None], y, y_ssm)
        return y

    def _attend(self, q, k, v, position_embeddings, n_attn, state, where):
        """Causal softmax attention for the first n_attn tokens of this call. Returns (batch, n_attn, nq, d).

        With a cache, K/V are kept while a later token of some row is still before the TransPoint
        (``where.next_first < P``), in a growing tensor or, for a static cache, in a buffer allocated once.
        """
        offset = where.offset
        cos, sin = (e[:, :n_attn] for e in position_embeddings)
        rotate = rotary if use_fused(q) else apply_rotary_pos_emb
        q_rot, k_rot = rotate(q[:, :n_attn].transpose(1, 2), k[:, :n_attn].transpose(1, 2), cos, sin)  # (b, h, n, d)
        v_new = v[:, :n_attn].transpose(1, 2)
        keep = state is not None and where.next_first < self.transpoint
        q_pos = where.query_positions(n_attn, q.device)
        if state is not None and state.static:
            if keep or offset > 0:  # a prefill already past the TransPoint never fills a buffer
                k_all, v_all = write_static(state, k_rot, v_new, where, q_pos, self.transpoint)
            if offset == 0:  # a prefill attends to its own keys, not to the (longer) buffer
                k_all, v_all = k_rot, v_new
            if not keep:
                state.keys = state.values = None
            if n_attn == 1 and offset > 0:
                return decode_attention(q_rot, k_all, v_all, q_pos, where, self.scaling)
        else:
            if state is not None and state.keys is not None:
                k_all = torch.cat([state.keys, k_rot], dim=2)
                v_all = torch.cat([state.values, v_new], dim=2)
            else:
                k_all, v_all = k_rot, v_new
            if state is not None:
                state.keys, state.values = (k_all, v_all) if keep else (None, None)
        kv_len = k_all.shape[2]
        keys_ok = where.keys_ok(kv_len)
        mask = None
        is_causal = offset == 0 and n_attn > 1
        if keys_ok is not None or (offset > 0 and n_attn > 1):
            k_pos = torch.arange(kv_len, device=q.device)
            mask = (k_pos[None, :] <= q_pos[:, None])[None, None]  # (1, 1, n, kv)
            if keys_ok is not None:  # padding keys are never attended; a padding query attends to itself
                mask = (mask & keys_ok[:, None, None, :]) | (k_pos[None, :] == q_pos[:, None])[None, None]
            is_causal = False
        with sdpa_kernel(_SDPA_INFERENCE if offset == 0 and not torch.is_grad_enabled() else _SDPA_BACKENDS):
            out = F.scaled_dot_product_attention(
                q_rot, k_all, v_all, attn_mask=mask, is_causal=is_causal, scale=self.scaling,
                enable_gqa=self.num_heads != self.num_kv_heads,
            )
        return out.transpose(1, 2)

    def ssm_inputs(
        self, hidden_states, q, k, v, position_embeddings, state=None, attention_mask=None, offset=0, seq_idx=None,
        real=None, raw_dt: bool = False,
    ):
        """The SSM's x, dt, A, B, C for every token of this call.

        real: (b, t) bool of this call's real tokens (else taken from attention_mask); padding gets Δ = 0.
        raw_dt: dt before its bias and softplus (for a scan that folds them in: ``dt_bias``, ``dt_softplus``);
            only without padding.

        Returns x (b, t, nq, d), dt (b, t, nq) and A (nq,) in fp32 (fp64 for fp64 inputs), B (b, t, nkv, d),
        C (b, t, nq, d).
        """
        b, t = q.shape[:2]
        if self.config.ssm_rope:
            cos, sin = position_embeddings
            q, k = (r.transpose(1, 2) for r in apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin))
        if real is None and attention_mask is not None:
            real = attention_mask[:, offset : offset + t]
        if real is not None:
            real = real.to(q.dtype)  # (b, t)
        if self.config.use_conv:
            xbc = torch.cat([v.flatten(2), k.flatten(2), q.flatten(2)], dim=-1)  # (b, t, ch)
            if real is not None:
                xbc = xbc * real[..., None]
            xbc = self._conv(xbc, state, seq_idx)
            nv = self.num_kv_heads * self.head_dim
            v, k, q = (
                xbc[..., :nv].view_as(v),
                xbc[..., nv : 2 * nv].view_as(k),
                xbc[..., 2 * nv :].view_as(q),
            )
        B = self.feature_map(k)
        C = self.feature_map(q)
        if self.config.ssm_c_scale:
            C = C * self.scaling
        x = v.repeat_interleave(self.num_heads // self.num_kv_heads, dim=2)
        cd = torch.promote_types(hidden_states.dtype, torch.float32)  # fp32; fp64 for an fp64 reference run
        A = -torch.exp(self.A_log.to(cd))
        if raw_dt:
            if real is not None:
                raise ValueError("raw_dt needs every token real: padding zeroes Δ after its softplus")
            return x, self.dt_proj(hidden_states), A, B, C
        dt = F.softplus(self.dt_proj(hidden_states).to(cd) + self.dt_bias.to(cd))
        if real is not None:
            dt = dt * real[..., None].to(cd)  # padding leaves the state untouched
        return x, dt, A, B, C

    def _conv(self, xbc: torch.Tensor, state: LayerState | None, seq_idx: torch.Tensor | None = None) -> torch.Tensor:
        """Causal depthwise conv over time. xbc: (b, t, ch); seq_idx (b, t): no tap reaches into another document."""
        kernel = self.config.conv_kernel
        if seq_idx is not None:
            out = xbc * self.conv1d.weight[:, 0, -1] + self.conv1d.bias
            for lag in range(1, kernel):
                same = (seq_idx[:, lag:] == seq_idx[:, :-lag]).to(xbc.dtype)[..., None]  # (b, t - lag, 1)
                tap = xbc[:, :-lag] * same * self.conv1d.weight[:, 0, -1 - lag]
                out = out + F.pad(tap, (0, 0, lag, 0))
            return out
        seq = xbc.transpose(1, 2)  # (b, ch, t)
        past = state.conv_state if state is not None and state.conv_state is not None else seq.new_zeros(
            seq.shape[0], seq.shape[1], kernel - 1
        )
        full = torch.cat([past, seq], dim=-1)
        if state is not None:
            state.conv_state = full[..., -(kernel - 1) :].detach() if kernel > 1 else full[..., :0]
        out = F.conv1d(full, self.conv1d.weight, self.conv1d.bias, groups=full.shape[1])
        return out.transpose(1, 2)

    def _ssm(self, hidden_states, q, k, v, position_embeddings, state, where, start, need_y):
        """SSM outputs for tokens [start, t) of this call, (batch, t - start, nq, d), or None if not need_y.

        Advances the cached state over all t tokens: tokens before ``start`` are attention tokens whose
        (B = K, x = V) the Memory Converter folds in. One token: one fused state update. No output needed:
        the final-state-only scan, run with the other layers' after the model's last layer when the call
        collects them (``where.converters``). Otherwise one scan over the call (its state at ``start`` is the
        converter's), as the cache-free forward does.
        """
        if state is not None and q.shape[1] == 1:  # decode: one recurrent step
            return self._ssm_step(hidden_states, q, k, v, position_embeddings, state, need_y)
        real = where.real
        # Δ's bias and softplus go into the scan's first kernel when no token is padding (a few launches less)
        x, dt, A, B, C = self.ssm_inputs(hidden_states, q, k, v, position_embeddings, state, real=real,
                                         raw_dt=real is None)
        fold = dict(dt_bias=self.dt_bias, dt_softplus=True) if real is None else {}
        h0 = state.ssm_state if state is not None else None
        chunk, backend = self.config.ssm_chunk_size, self.config.ssm_backend
        y = None
        if not need_y and state is not None and where.converters is not None:  # scanned with other layers
            # a copy of the bias: FSDP frees a gathered parameter's storage once the layer's forward is done
            bias = self.dt_bias.detach().clone() if fold else None
            where.converters.add(state, x, dt, A, B, h0=h0, dt_bias=bias)
            return None
        if not need_y:
            h0 = ssd_state(x, dt, A, B, chunk, initial_states=h0, backend=backend, **fold)
        elif state is not None:
            y, h0 = ssd_scan(x, dt, A, B, C, chunk, D=self.D, initial_states=h0, return_final_states=True,
                             backend=backend, **fold)
        else:
            y = ssd_scan(x, dt, A, B, C, chunk, D=self.D, backend=backend, **fold)
        if state is not None:
            state.ssm_state = h0
        if not need_y:
            return None
        y = y[:, start:]
        if self.config.use_z_gate:
            y = self.ssm_norm(y, self.z_proj(hidden_states[:, start:]).view_as(y))
        return y

    def _ssm_step(self, hidden_states, q, k, v, position_embeddings, state, need_y):
        """One decoded token (always a real one): the fused state update, (batch, 1, nq, d) or None.

        Δ's bias and softplus, A = -exp(A_log) and x = V's GQA head index are folded into the update (one
        kernel instead of ~8 per layer and step); the conv and the RoPE'd B/C options take ``ssm_inputs``.
        """
        cfg = self.config
        if cfg.use_conv or cfg.ssm_rope:
            x, dt, A, B, C = self.ssm_inputs(hidden_states, q, k, v, position_embeddings, state)
            x, dt, B, C = x[:, 0], dt[:, 0], B[:, 0], C[:, 0]
            fold = dict(dt_bias=None, dt_softplus=False, A_log=False)
        else:
            x, B, C = v[:, 0], self.feature_map(k[:, 0]), self.feature_map(q[:, 0])
            if cfg.ssm_c_scale:
                C = C * self.scaling
            dt, A = self.dt_proj(hidden_states[:, 0]), self.A_log
            fold = dict(dt_bias=self.dt_bias, dt_softplus=True, A_log=True)
        h0 = state.ssm_state
        if h0 is None:
            h0 = q.new_zeros(q.shape[0], self.num_heads, self.head_dim, B.shape[-1], dtype=torch.float32)
        state.ssm_state, y = ssd_update(h0, x, dt, A, B, C, self.D, out_dtype=q.dtype, **fold)  # fused on CUDA
        if not need_y:
            return None
        y = y.unsqueeze(1)
        if cfg.use_z_gate:
            y = self.ssm_norm(y, self.z_proj(hidden_states).view_as(y))
        return y


__all__ = ["GatedRMSNorm", "SSM_PARAM_PATTERN", "TransMambaMixer"]
