"""A module's ``state_dict`` entries read from its attributes.

Under FSDP2 ``state_dict()`` returns each parameter's shard (a DTensor) even while the weights are gathered;
``attribute_state`` reads what the modules hold at that moment, so with the weights gathered it gives the
whole, plain tensors a checkpoint needs.
"""

from __future__ import annotations

import torch


def attribute_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """{name: tensor} with ``state_dict()``'s keys (tied weights under each name, persistent buffers only),
    detached, without copying."""
    out: dict[str, torch.Tensor] = {}
    for mod_name, module in model.named_modules(remove_duplicate=False):
        prefix = f"{mod_name}." if mod_name else ""
        for name, param in module._parameters.items():
            if param is not None:
                out[prefix + name] = param.detach()
        for name, buf in module._buffers.items():
            if buf is not None and name not in module._non_persistent_buffers_set:
                out[prefix + name] = buf.detach()
    return out


__all__ = ["attribute_state"]
