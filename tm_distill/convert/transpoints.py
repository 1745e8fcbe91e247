"""TransPoint specs: the one grammar the CLI and recipes accept, parsed here and nowhere else.

- ``all=N``                      every layer switches at token N
- ``cycle=P0,P1,...``            layer l gets P[l mod len(P)] (the paper's V9: cycle=0,128,...,8192)
- ``attn=L0,L1,...;ssm=rest``    listed layers stay attention, the rest are pure SSM (P = 0)
  (``attn=...;all=N`` or ``attn=...;cycle=...`` give the rest that schedule instead)
- ``P0,P1,...``                  an explicit per-layer list (``attn`` for a pure attention layer)
- ``attn`` / ``ssm``             every layer pure attention / pure SSM
- ``auto...``                    chosen from calibration data (``tm_distill.plan``); not parsed here

``plan.resolve_transpoints`` resolves any spec, fixed or ``auto``; ``is_auto_spec`` tells them apart.
"""

from __future__ import annotations

from ..errors import UserError
from ..models.configuration import ATTENTION_ONLY


class TransPointSpecError(UserError, ValueError):
    pass


class AutoSpecError(TransPointSpecError):
    """A malformed ``auto`` spec, or a budget no schedule can meet."""


def is_auto_spec(spec: str) -> bool:
    """Whether ``spec`` is chosen from calibration data (``auto:...``) rather than fixed."""
    return spec.strip().startswith("auto")


def _int(token: str, spec: str, what: str) -> int:
    token = token.strip()
    if token == "attn":
        return ATTENTION_ONLY
    try:
        value = int(token)
    except ValueError:
        raise TransPointSpecError(f"{what} {token!r} in spec {spec!r} is not an integer (or 'attn')") from None
    if value < 0:
        raise TransPointSpecError(f"{what} {value} in spec {spec!r} is negative; TransPoints are token indices >= 0")
    return value


def _ints(body: str, spec: str, what: str) -> list[int]:
    items = [t for t in body.split(",")]
    if not body.strip() or any(not t.strip() for t in items):
        raise TransPointSpecError(f"empty entry in {what} list of spec {spec!r}")
    return [_int(t, spec, what) for t in items]


def _schedule(key: str, body: str, spec: str, num_layers: int) -> list[int]:
    if key == "all":
        return [_int(body, spec, "TransPoint")] * num_layers
    if key == "cycle":
        values = _ints(body, spec, "TransPoint")
        return [values[i % len(values)] for i in range(num_layers)]
    if key == "ssm":
        if body.strip() != "rest":
            raise TransPointSpecError(f"'ssm=' takes only 'rest' in spec {spec!r}, e.g. attn=0,8,16;ssm=rest")
        return [0] * num_layers
    raise TransPointSpecError(
        f"unknown key {key!r} in spec {spec!r}: use all=N, cycle=P0,P1,..., attn=L0,L1,...;ssm=rest, "
        "or an explicit per-layer list"
    )


def parse_transpoints(spec: str, num_layers: int) -> list[int]:
    """One TransPoint per layer from ``spec``; raises TransPointSpecError naming the bad part."""
    if num_layers <= 0:
        raise TransPointSpecError(f"num_layers must be positive, got {num_layers}")
    spec = spec.strip()
    if not spec:
        raise TransPointSpecError("empty TransPoint spec: try all=2048 or cycle=0,128,256,512,1024,2048,4096,8192")
    if is_auto_spec(spec):
        raise TransPointSpecError(
            f"spec {spec!r} is chosen from calibration data: run `tm-distill plan TEACHER --budget ...` "
            "(or give it to `distill`), which resolves it to an explicit list"
        )
    if spec == "attn":
        return [ATTENTION_ONLY] * num_layers
    if spec == "ssm":
        return [0] * num_layers
    if "=" not in spec:
        values = _ints(spec, spec, "TransPoint")
        if len(values) != num_layers:
            raise TransPointSpecError(
                f"spec {spec!r} lists {len(values)} TransPoints but the model has {num_layers} layers"
            )
        return values
    parts = [p.strip() for p in spec.split(";") if p.strip()]
    attn_layers: list[int] = []
    rest: list[int] | None = None
    for part in parts:
        key, sep, body = part.partition("=")
        key = key.strip()
        if not sep:
            raise TransPointSpecError(f"part {part!r} of spec {spec!r} has no '='")
        if key == "attn":
            attn_layers = _ints(body, spec, "layer index")
            bad = [i for i in attn_layers if i >= num_layers]
            if bad:
                raise TransPointSpecError(
                    f"layer index {bad[0]} in spec {spec!r} is out of range: the model has layers 0..{num_layers - 1}"
                )
        elif rest is not None:
            raise TransPointSpecError(f"spec {spec!r} sets the schedule twice ({part!r}); give one of all/cycle/ssm")
        else:
            rest = _schedule(key, body, spec, num_layers)
    if rest is None:
        if not attn_layers:
            raise TransPointSpecError(f"spec {spec!r} gives no schedule")
        raise TransPointSpecError(f"spec {spec!r} lists attention layers but not the rest: add ';ssm=rest'")
    for i in attn_layers:
        rest[i] = ATTENTION_ONLY
    return rest


def describe_transpoints(transpoints: list[int]) -> str:
    """Compact, human-readable: '0,128,attn,...'."""
    return ",".join("attn" if p >= ATTENTION_ONLY else str(p) for p in transpoints)


def scale_cycle(seq_len: int, num_values: int = 8) -> str:
    """The paper's cycle schedule scaled to ``seq_len``: 0 and then powers of two ending at seq_len."""
    values = [0] + [max(1, seq_len >> k) for k in range(num_values - 2, -1, -1)]
    return "cycle=" + ",".join(str(v) for v in values)


__all__ = ["AutoSpecError", "TransPointSpecError", "describe_transpoints", "is_auto_spec", "parse_transpoints", "scale_cycle"]
