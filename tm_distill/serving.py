"""Serve a student over transformers' OpenAI-compatible HTTP API (``tm-distill serve``).

``transformers serve`` (5.25) cannot load a student, with or without ``--trust-remote-code``: its model loader
(``transformers/cli/serving/model_manager.py``, ``ModelLoader._load_model``) takes the class that
``config.architectures[0]`` names from the ``transformers`` module itself, and a class that lives in a
checkpoint's own code (``auto_map``) or in another package is not there: it fails with ``AttributeError: module
transformers has no attribute TransMambaForCausalLM``. Nothing else in its server is in the way: given the model
through ``AutoModelForCausalLM``, it generates with the student's hybrid cache, whole or streamed. So this
module runs transformers' own server (``transformers.cli.serve.Serve``: the same endpoints, request and response
formats, options) with a loader that takes a class transformers does not export from the Auto classes.

The loader is pickled into the model's process (the server spawns it), which imports this module and so the
``tm_distill`` package first: the student loads with its registered classes, no remote code needed.
"""

from __future__ import annotations

import transformers
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.cli.serve import Serve
from transformers.cli.serving.model_manager import ModelLoader
from transformers.cli.serving.utils import parse_model_id


class StudentLoader(ModelLoader):
    """transformers' model loader; a class it does not export (``config.architectures``) comes from the Auto
    classes, like a config that names no architecture does in its own loader."""

    @classmethod
    def like(cls, loader: ModelLoader) -> StudentLoader:
        """A StudentLoader with ``loader``'s settings (device, dtype, attention, quantization, remote code)."""
        new = cls.__new__(cls)
        new.__dict__.update(vars(loader))
        return new

    def _load_model(self, model_id: str, tqdm_class=None, progress_callback=None):
        repo, revision, gguf_file = parse_model_id(model_id)
        config = AutoConfig.from_pretrained(repo, revision=revision, trust_remote_code=self.trust_remote_code)
        if gguf_file is not None or not config.architectures or hasattr(transformers, config.architectures[0]):
            return super()._load_model(model_id, tqdm_class=tqdm_class, progress_callback=progress_callback)
        kwargs = {"revision": revision, "attn_implementation": self.attn_implementation, "dtype": self.dtype,
                  "device_map": self.device, "trust_remote_code": self.trust_remote_code, "tqdm_class": tqdm_class}
        if (quantization := self.get_quantization_config()) is not None:
            kwargs["quantization_config"] = quantization
        return AutoModelForCausalLM.from_pretrained(repo, **kwargs)


class StudentServe(Serve):
    """``transformers serve`` whose model process loads with :class:`StudentLoader`; runs until stopped."""

    def run(self, *args, **kwargs) -> None:
        self.loader = StudentLoader.like(self.loader)
        super().run(*args, **kwargs)


def serve(student: str, host: str = "localhost", port: int = 8000, device: str = "auto", dtype: str = "auto",
          log_level: str = "info") -> None:
    """Serve ``student`` (a folder) at http://host:port/v1 until interrupted (Ctrl+C or SIGTERM)."""
    StudentServe(force_model=student, host=host, port=port, device=device, dtype=dtype, log_level=log_level)


__all__ = ["StudentLoader", "StudentServe", "serve"]
