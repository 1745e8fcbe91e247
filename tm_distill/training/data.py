"""A run's token data beyond the training windows: the held-out windows of the before/after KL, and the check
that every stage's batch fits the training text (before anything is written)."""

from __future__ import annotations

import logging

import torch

from ..recipe import Recipe, RecipeError

log = logging.getLogger(__name__)


def heldout_windows(recipe: Recipe, tokenizer, data: dict) -> torch.Tensor:
    """(n, data.seq_len) held-out windows, n <= data.heldout_windows.

    data: seq_len -> TokenData of ``data.source``. With ``data.heldout_source`` the windows come from all of
    that text (``data.heldout_fraction`` is then 0); otherwise from the source's held-out documents.
    """
    seq_len, n = recipe.data.seq_len, recipe.data.heldout_windows
    source = recipe.data.heldout_source
    if not source:
        return data[seq_len].heldout[:n]
    from ..data.loading import DataSourceError  # noqa: PLC0415
    from ..data.tokens import TokenDataError  # noqa: PLC0415
    from ..data.windows import load_documents  # noqa: PLC0415

    try:
        held = load_documents(source, tokenizer, heldout_fraction=0.0, seed=recipe.seed,
                              text_field=recipe.data.text_field).windows(seq_len)
    except (DataSourceError, TokenDataError) as err:
        raise RecipeError("data.heldout_source", str(err)) from None
    log.info("held-out windows from %s: %d of %d tokens", source, min(n, held.train.shape[0]), seq_len)
    return held.train[:n]


def check_batches(recipe: Recipe, data: dict, world: int = 1) -> None:
    """Every stage's step (batch_size x grad_accum x processes sequences) fits its training windows."""
    for i, stage in enumerate(recipe.stages):
        seq_len = recipe.stage_seq_len(stage)
        windows = int(data[seq_len].train.shape[0])
        per_step = stage.batch_size * stage.grad_accum * world
        if windows < per_step:
            raise RecipeError(
                f"stages[{i}].batch_size",
                f"data.source gives {windows} training window(s) of {seq_len} tokens, fewer than one step's "
                f"{per_step} (batch_size {stage.batch_size} x grad_accum {stage.grad_accum} x {world} process(es)): "
                "give more text, or lower batch_size, grad_accum or seq_len")


__all__ = ["check_batches", "heldout_windows"]
