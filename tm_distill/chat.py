"""Rendering chat messages with a tokenizer's chat template, the one way every caller does it.

A chat template is Jinja code shipped inside a model folder. transformers renders it in Jinja's sandbox, which
refuses templates that reach for Python internals (``SecurityError``); such a template, or one that fails in
any other way, is a ``ChatTemplateError`` naming the tokenizer, never a traceback.
"""

from __future__ import annotations

from jinja2 import TemplateError

from .errors import UserError


class ChatTemplateError(UserError, ValueError):
    """A chat template that the sandbox refuses or that fails to render."""


def render_chat(tokenizer, messages: list[dict], **kwargs) -> str:
    """``tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)``; ChatTemplateError when it fails."""
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    except TemplateError as err:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ChatTemplateError(f"the chat template of {name} cannot be used ({type(err).__name__}: "
                                f"{str(err).splitlines()[0] if str(err) else ''}): fix or remove its "
                                "chat_template, or leave out the chat option") from None


__all__ = ["ChatTemplateError", "render_chat"]
