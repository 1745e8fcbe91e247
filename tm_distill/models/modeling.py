"""The TransMamba hybrid causal LM: a Llama decoder whose attention is a TransMamba mixer.

Norms, MLP and rotary embeddings are transformers' own Llama modules, so a student whose every TransPoint is
past the sequence computes exactly what the teacher computes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm, LlamaRotaryEmbedding

from ..ops.fused import rms_norm, use_fused
from .cache import CACHE_KWARG, TransMambaCache, output_cache
from .configuration import TransMambaConfig
from .converter import Converters
from .graphs import DecodeGraph, capturable_reason
from .mixer import GatedRMSNorm, TransMambaMixer
from .placement import Placement

log = logging.getLogger(__name__)


class RMSNorm(LlamaRMSNorm):
    """transformers' ``LlamaRMSNorm``; at inference on CUDA one fused kernel (``ops.fused``)."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if use_fused(hidden_states):
            return rms_norm(hidden_states, self.weight, self.variance_epsilon)
        return super().forward(hidden_states)


class TransMambaDecoderLayer(nn.Module):
    def __init__(self, config: TransMambaConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.mixer = TransMambaMixer(config, layer_idx)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self, hidden_states, position_embeddings, cache=None, offset=0, attention_mask=None, seq_idx=None,
        position_ids=None, placement=None,
    ):
        residual = hidden_states
        hidden_states = self.input_layernorm(hidden_states)
        state = cache.states[self.layer_idx] if cache is not None else None
        hidden_states = self.mixer(
            hidden_states, position_embeddings, state, offset, attention_mask, seq_idx, position_ids, placement
        )
        hidden_states = residual + hidden_states
        residual = hidden_states
        hidden_states = self.post_attention_layernorm(hidden_states)
        hidden_states = self.mlp(hidden_states)
        return residual + hidden_states


class TransMambaPreTrainedModel(PreTrainedModel):
    config_class = TransMambaConfig
    config: TransMambaConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["TransMambaDecoderLayer"]
    _skip_keys_device_placement = [CACHE_KWARG]
    _supports_sdpa = True
    _is_stateful = True

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, TransMambaMixer):
            module.reset_ssm_parameters()
        elif isinstance(module, GatedRMSNorm):
            init.ones_(module.weight)


def _one_cache(past_key_values, cache):
    """transformers >= 5.24 passes the cache as ``cache`` (``past_key_values`` before): accept either, not both."""
    if past_key_values is not None and cache is not None and past_key_values is not cache:
        raise ValueError("give the cache as `cache` or as `past_key_values`, not both")
    return past_key_values if past_key_values is not None else cache


def packed_seq_idx(position_ids: torch.Tensor | None) -> torch.Tensor | None:
    """Document index per token (batch, seqlen) when position_ids restart inside a row, else None.

    A restart is a position that does not follow its predecessor by +1 (the convention of transformers'
    packed-sequence masks), so a teacher given the same position_ids sees the same documents.
    """
    if position_ids is None or position_ids.shape[-1] < 2:
        return None
    starts = position_ids[..., 1:] != position_ids[..., :-1] + 1
    if not bool(starts.any()):
        return None
    starts = torch.nn.functional.pad(starts, (1, 0))
    return torch.cumsum(starts.to(torch.int32), dim=-1, dtype=torch.int32)


class TransMambaModel(TransMambaPreTrainedModel):
    def __init__(self, config: TransMambaConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(TransMambaDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()

    def _cache_for(self, past_key_values, use_cache: bool) -> TransMambaCache | None:
        """The cache this call reads and extends: the caller's, a new one when use_cache asks, or None."""
        if past_key_values is not None and not isinstance(past_key_values, TransMambaCache):
            raise TypeError(
                f"a TransMamba model needs a TransMambaCache, got {type(past_key_values).__name__}; "
                "let generate() create it or pass TransMambaCache(config.num_hidden_layers)"
            )
        if use_cache and past_key_values is None:
            past_key_values = TransMambaCache(self.config.num_hidden_layers)
        return past_key_values

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: TransMambaCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        cache: TransMambaCache | None = None,
        cache_position: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """cache_position: (seqlen,) absolute token indices on the device, for a captured decode step
        (``graphs.DecodeGraph`` passes a static buffer); made from the cache's length otherwise."""
        past_key_values = _one_cache(past_key_values, cache)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        use_cache = use_cache if use_cache is not None else False
        past_key_values = self._cache_for(past_key_values, use_cache)
        offset = past_key_values.get_seq_length() if past_key_values is not None else 0
        t = inputs_embeds.shape[1]
        placement, attention_mask, position_ids, seq_idx = _placement(
            past_key_values, attention_mask, position_ids, offset, t, inputs_embeds, cache_position)
        if placement is not None and past_key_values is not None and t > 1:
            placement.converters = Converters(self.config.ssm_chunk_size, self.config.ssm_backend)
        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids)
        all_hidden = [] if output_hidden_states else None
        for layer in self.layers:
            if all_hidden is not None:
                all_hidden.append(hidden_states)
            if self.gradient_checkpointing and self.training and past_key_values is None:
                hidden_states = self._gradient_checkpointing_func(
                    layer.__call__, hidden_states, position_embeddings, None, offset, attention_mask, seq_idx,
                    position_ids, placement,
                )
            else:
                hidden_states = layer(
                    hidden_states, position_embeddings, past_key_values, offset, attention_mask, seq_idx,
                    position_ids, placement,
                )
        if placement is not None and placement.converters is not None:
            placement.converters.flush()  # the layers' Memory Converter states, one scan
        hidden_states = self.norm(hidden_states)
        if all_hidden is not None:
            all_hidden.append(hidden_states)
        if past_key_values is not None:
            past_key_values.seen_tokens = offset + t
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
            **{CACHE_KWARG: past_key_values if use_cache else None},
        )


def _placement(cache, attention_mask, position_ids, offset: int, t: int, inputs_embeds, cache_position):
    """Where this call's tokens sit: (placement, attention_mask, position_ids, seq_idx) for the layers.

    With a cache, the prefill records each row's left padding and later calls read it from the cache; without
    one, a padding mask gives per-row positions; restarting ``position_ids`` without either mean packed
    documents (``seq_idx``).
    """
    if attention_mask is not None and attention_mask.dim() != 2:
        raise ValueError("attention_mask must be a 2D (batch, seqlen) padding mask")
    placement = None
    if cache is not None:
        # The prefill records each row's left padding; later calls add real tokens only, so their mask
        # (generate() passes one every step) adds nothing and is not read (no host sync per step).
        if offset == 0:
            cache.set_padding(attention_mask)
        limit = cache.max_length
        if limit is not None and offset + t > limit:
            raise ValueError(f"the static cache holds {limit} tokens (max_length); this call reaches "
                             f"{offset + t}: make the cache with a larger max_length")
        placement = Placement.for_cache(cache, offset, t, inputs_embeds.device, cache_position)
        attention_mask = None
    elif attention_mask is not None:
        attention_mask = None if bool(attention_mask.all()) else attention_mask
        if attention_mask is not None:
            placement = Placement.for_mask(attention_mask, offset, t, inputs_embeds.device)
    if position_ids is None:
        if placement is not None and placement.rows is not None:  # count from each row's first real token
            position_ids = placement.rows.clamp(min=0)
        elif placement is not None and placement.cache_position is not None:
            position_ids = placement.cache_position.unsqueeze(0)
        else:
            position_ids = torch.arange(offset, offset + t, device=inputs_embeds.device).unsqueeze(0)
    # Restarting position_ids mean packed documents, unless they come from a padding mask (generate()
    # derives position_ids from it) or a cache is in use: those are ordinary rows.
    seq_idx = packed_seq_idx(position_ids) if attention_mask is None and cache is None else None
    if seq_idx is not None:
        seq_idx = seq_idx.expand(inputs_embeds.shape[0], -1)
        position_ids = position_ids.expand(inputs_embeds.shape[0], -1)
    return placement, attention_mask, position_ids, seq_idx


def _graph_step(cache, input_ids, inputs_embeds, labels, output_hidden_states) -> bool:
    """Whether this forward is a one-token decode step to replay as a CUDA graph (``TransMambaCache(graphs=True)``)."""
    return (
        cache is not None and cache.graphs and not cache.capturing and cache.seen_tokens > 0
        and input_ids is not None and inputs_embeds is None and input_ids.shape[1] == 1 and input_ids.is_cuda
        and labels is None and not output_hidden_states and not torch.is_grad_enabled()
    )


class TransMambaForCausalLM(TransMambaPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: TransMambaConfig):
        super().__init__(config)
        self.model = TransMambaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # forward() makes its own TransMambaCache

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: TransMambaCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        cache: TransMambaCache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        past_key_values = _one_cache(past_key_values, cache)
        if _graph_step(past_key_values, input_ids, inputs_embeds, labels, output_hidden_states):
            if past_key_values.decode_graph is None:
                reason = capturable_reason(self, past_key_values)
                if reason is None:
                    past_key_values.decode_graph = DecodeGraph(self, past_key_values)
                else:  # e.g. no Triton for the fused update: decode eagerly, once said
                    log.warning("decoding without CUDA graphs: %s", reason)
                    past_key_values.graphs = False
            if past_key_values.decode_graph is not None:
                logits = past_key_values.decode_graph(input_ids).clone()  # the graph's buffer is reused next step
                return CausalLMOutputWithPast(logits=logits, **{CACHE_KWARG: past_key_values})
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            cache_position=kwargs.get("cache_position"),
        )
        hidden_states = outputs.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden_states = hidden_states[:, -logits_to_keep:]
        elif isinstance(logits_to_keep, torch.Tensor):
            hidden_states = hidden_states[:, logits_to_keep]
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, **{CACHE_KWARG: output_cache(outputs)}
        )


@contextlib.contextmanager
def use_transpoints(model: torch.nn.Module, transpoints: list[int]) -> Iterator[None]:
    """Set ``model.config.transpoints`` for the block and restore the previous list afterwards.

    The mixers read ``config.transpoints`` live, so this changes the schedule of the next forward passes.
    """
    config = model.config
    n = config.num_hidden_layers
    if len(transpoints) != n:
        raise ValueError(f"got {len(transpoints)} TransPoints for a model with {n} layers")
    previous = list(config.transpoints)
    config.transpoints = [int(p) for p in transpoints]
    try:
        yield
    finally:
        config.transpoints = previous


__all__ = ["TransMambaDecoderLayer", "TransMambaForCausalLM", "TransMambaModel", "TransMambaPreTrainedModel",
           "use_transpoints"]
