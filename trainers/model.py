"""Loading the policy and reference: any local causal LM directory, or ``tiny``.

Models come only from local ``save_pretrained`` directories, read with safetensors and without
remote code unless the user asks for it; nothing is ever downloaded. ``tiny`` is a small random
Llama with a byte-level tokenizer that needs no files, for tests and the demo::

    >>> from trainers.model import load_model
    >>> loaded = load_model("tiny", seed=0)
    >>> loaded.model.config.hidden_size
    64

Dropout is switched off (as TRL does by default) so that the reference pass and the policy's
first step see the same function, and so that a run is deterministic.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    ByT5Tokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from prefcurate.base.errors import InputError, one_line
from prefcurate.base.log import get_logger

TINY = "tiny"

#: The tiny model's shape: about 140k parameters, a few ms per step on a laptop core.
TINY_SHAPE: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 176,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
}

MODEL_FIX = "pass a local save_pretrained directory of a causal LM, or 'tiny'"


@dataclass
class LoadedModel:
    """A causal LM, its tokenizer, and a fingerprint of its initial weights (for caches)."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    fingerprint: str
    name: str
    zeroed_config: dict[str, float] = field(default_factory=dict)

    def restore_config(self) -> None:
        """Put back the dropout settings zeroed for training, before the model is saved."""
        for key, value in self.zeroed_config.items():
            setattr(self.model.config, key, value)


def tiny_config(**shape: Any) -> LlamaConfig:
    """The tiny model's config (``shape`` overrides :data:`TINY_SHAPE`), for its byte tokenizer."""
    tokenizer = ByT5Tokenizer()
    return LlamaConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        use_cache=False,
        **{**TINY_SHAPE, **shape},
    )


def build_tiny(seed: int) -> LoadedModel:
    """A random-initialised small Llama and a ``ByT5Tokenizer``, identical for the same seed."""
    tokenizer = ByT5Tokenizer()
    config = tiny_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    digest = hashlib.sha256(f"tiny|{config.to_json_string()}|seed={seed}".encode()).hexdigest()
    return LoadedModel(model, tokenizer, digest, TINY)


def load_model(
    spec: str,
    *,
    seed: int = 0,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str | None = None,
    quantization_config: Any = None,
    device_map: Any = None,
) -> LoadedModel:
    """Load ``spec`` (a local directory or ``"tiny"``) in ``dtype``, dropout off, ready to train.

    ``attn_implementation`` (sdpa, flash_attention_2, eager) is passed to transformers;
    ``quantization_config`` (QLoRA's 4-bit) too. Raises :class:`InputError` when the directory is
    missing, is not a Hugging Face model, is not a causal LM, has no tokenizer, or has only
    pickle weights and ``allow_pickle`` is off.
    """
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    extra: dict[str, Any] = {}
    if attn_implementation:
        extra["attn_implementation"] = attn_implementation
    if quantization_config is not None:
        extra["quantization_config"] = quantization_config
    if device_map is not None:
        extra["device_map"] = device_map
    if spec == TINY:
        if quantization_config is not None:
            raise InputError("--load-in-4bit needs a model directory, not 'tiny'")
        loaded = build_tiny(seed)
        loaded.model.to(dtype)
        if attn_implementation:
            try:
                loaded.model.set_attn_implementation(attn_implementation)
            except (ValueError, ImportError) as exc:
                raise InputError(
                    f"--attn-implementation {attn_implementation} is not available: {exc}"
                ) from exc
    else:
        try:
            loaded = load_pretrained(
                Path(spec),
                AutoModelForCausalLM,
                trust_remote_code=trust_remote_code,
                allow_pickle=allow_pickle,
                dtype=dtype,
                what="a causal language model",
                fix=MODEL_FIX,
                **extra,
            )
        except ImportError as exc:  # flash_attention_2 or bitsandbytes missing
            raise InputError(f"cannot load the model as asked: {exc}", where=spec) from exc
    loaded.zeroed_config = _disable_dropout(loaded.model)
    loaded.model.config.use_cache = False
    if loaded.tokenizer.pad_token_id is None:
        loaded.tokenizer.pad_token = loaded.tokenizer.eos_token
    return loaded


def load_reference(
    spec: str, policy: LoadedModel, *, trust_remote_code: bool = False, allow_pickle: bool = False
) -> LoadedModel:
    """Load ``--ref-model``: like :func:`load_model`, and it must share the policy's tokenizer."""
    ref = load_model(spec, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    if ref.tokenizer.get_vocab() != policy.tokenizer.get_vocab():
        raise InputError(
            "the reference model's tokenizer differs from the policy's",
            where=spec,
            fix="pass a reference model with the same tokenizer as --model",
        )
    return ref


def weights_format(path: Path, *, allow_pickle: bool = False, quiet: bool = False) -> bool:
    """Say how a model directory's weights may be read: ``True`` for safetensors.

    A pickle checkpoint (``pytorch_model.bin``) can run arbitrary code when it is unpickled, so it
    is refused unless the user passed ``--allow-pickle``; even then it is read with
    ``weights_only=True`` (transformers' default) and a warning names the file. Returns ``False``
    when the pickle weights are to be used. Raises :class:`InputError` otherwise.
    """
    if any(path.glob("*.safetensors")):
        return True
    pickled = sorted(file.name for file in path.glob("*.bin"))
    if not pickled:
        raise InputError(
            "no model weights (no .safetensors file)",
            where=path,
            fix="save the model there with save_pretrained (safetensors is the default)",
        )
    if not allow_pickle:
        raise InputError(
            f"refusing pickle weights {pickled[0]} (unpickling can run code)",
            where=path,
            fix="re-save the model as safetensors with save_pretrained, or pass --allow-pickle "
            "if you trust this file",
        )
    if not quiet:
        get_logger("trainers.model").warning(
            "loading pickle weights %s from %s (--allow-pickle); "
            "re-save them as safetensors to drop the flag",
            pickled[0],
            path,
        )
    return False


def load_pretrained(
    path: Path,
    auto_class: type,
    *,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    dtype: torch.dtype = torch.float32,
    what: str,
    fix: str,
    **from_pretrained: Any,
) -> LoadedModel:
    """Load a local directory with ``auto_class`` (an ``AutoModelFor…``) and its tokenizer, safely.

    Local files only, safetensors only (pickle only with ``allow_pickle``, see
    :func:`weights_format`), remote code only when asked. ``what`` names the kind of
    model for the error raised when ``auto_class`` cannot load it; ``fix`` ends every error line.
    """
    path = Path(path)
    config = read_config(path, trust_remote_code=trust_remote_code, fix=fix)
    use_safetensors = weights_format(path, allow_pickle=allow_pickle)
    for weights in sorted(path.glob("*.safetensors")):
        check_safetensors(weights)
    try:
        model = auto_class.from_pretrained(
            path,
            config=config,
            local_files_only=True,
            use_safetensors=use_safetensors,
            trust_remote_code=trust_remote_code,
            dtype=dtype,
            **from_pretrained,
        )
    except ValueError as exc:
        raise InputError(
            f"{getattr(config, 'model_type', 'this model')} is not {what}", where=path, fix=fix
        ) from exc
    except pickle.UnpicklingError as exc:  # weights_only=True met something that is not a tensor
        raise InputError(
            "the pickle weights hold objects other than tensors; refused to unpickle them",
            where=path,
            fix="use weights from a source you trust, saved as safetensors",
        ) from exc
    except (RuntimeError, OSError) as exc:  # shapes that do not match config.json, unreadable files
        text = str(exc)
        if "mismatch" in text or "size" in text or isinstance(exc, OSError):
            raise InputError(
                f"the weights do not match config.json ({one_line(text, 160)})",
                where=path / "config.json",
                fix="use the config.json saved with these weights",
            ) from exc
        raise
    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    embeddings = model.get_input_embeddings()
    rows = getattr(embeddings, "num_embeddings", None)
    if rows is not None and len(tokenizer) > rows:
        raise InputError(
            f"the tokenizer has {len(tokenizer)} tokens but the model only {rows} embeddings",
            where=path,
            fix="use the tokenizer saved with this model",
        )
    return LoadedModel(model, tokenizer, directory_fingerprint(path), str(path))


def load_tokenizer(path: Path, *, trust_remote_code: bool) -> PreTrainedTokenizerBase:
    """The tokenizer saved in a model directory, from local files only."""
    try:
        return AutoTokenizer.from_pretrained(
            path, local_files_only=True, trust_remote_code=trust_remote_code
        )
    except (ValueError, OSError, TypeError) as exc:
        raise InputError(
            "no usable tokenizer in the model directory",
            where=path,
            fix="save the tokenizer beside the model with tokenizer.save_pretrained(path)",
        ) from exc


def check_safetensors(path: Path) -> None:
    """A truncated or corrupt .safetensors file is an :class:`InputError` naming it.

    The format is an 8-byte header length, a JSON header giving each tensor's byte range, then
    the data: the file must be exactly as long as the header says.
    """
    fix = "re-download or re-save the model (save_pretrained)"
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n <= 0 or 8 + n > size:
                raise InputError("truncated or corrupt safetensors file (no header)", where=path,
                                 fix=fix)  # fmt: skip
            header = json.loads(fh.read(n))
    except OSError as exc:
        raise InputError(f"cannot read the weights ({exc.strerror})", where=path, fix=fix) from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError("corrupt safetensors header", where=path, fix=fix) from exc
    ends = [
        v["data_offsets"][1]
        for k, v in header.items()
        if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v
    ]
    expected = 8 + n + max(ends, default=0)
    if size < expected:
        raise InputError(
            f"truncated safetensors file ({size} bytes, its header needs {expected})",
            where=path,
            fix=fix,
        )


def check_max_length(loaded: LoadedModel, max_length: int, *, flag: str = "--max-length") -> None:
    """Refuse a length beyond the model's position limit (it would train past what it can see)."""
    limit = getattr(loaded.model.config, "max_position_embeddings", None)
    if isinstance(limit, int) and max_length > limit:
        raise InputError(
            f"{flag} {max_length} is beyond the model's position limit {limit} "
            "(max_position_embeddings)",
            where=loaded.name,
            fix=f"pass {flag} {limit} or less",
        )


def read_config(path: Path, *, trust_remote_code: bool, fix: str) -> Any:
    """The config of model directory ``path``, or one clear line ending with ``fix``.

    A missing directory or config.json is said as such. An architecture that only its own code
    defines needs the flag: transformers reads a known ``model_type`` without running anything,
    even when ``auto_map`` names custom code; only an unknown one needs that code, and then the
    error names the flag rather than transformers' advice to upgrade.
    """
    if not path.is_dir():
        raise InputError("model directory not found", where=path, fix=fix)
    if not (path / "config.json").is_file():
        raise InputError("not a Hugging Face model directory (no config.json)", where=path, fix=fix)
    try:
        config = AutoConfig.from_pretrained(
            path, local_files_only=True, trust_remote_code=trust_remote_code
        )
    except Exception as exc:  # noqa: BLE001 - transformers validates configs with its own errors
        if not trust_remote_code and _asks_for_code(path):
            raise InputError(
                "the model's architecture is defined by code in its directory (auto_map), "
                "which is not run by default",
                where=path / "config.json",
                fix="pass --trust-remote-code if you trust that code",
            ) from exc
        raise InputError(
            f"bad config.json: {one_line(exc, 200)}", where=path / "config.json", fix=fix
        ) from exc
    check_sizes(config, path / "config.json")
    return config


#: The size fields of a decoder's config; each, when set, is a whole number of at least 1.
SIZE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
)
#: No config describes more parameters or layers than this: beyond, building even its shape
#: (on the meta device) takes hours or overflows, and no machine could train it.
MAX_PARAMETERS = 10**13
MAX_LAYERS = 10_000


def check_sizes(config: Any, where: Path) -> None:
    """Refuse sizes no model has (negative, zero, fractional, astronomically large) with one line
    naming the field, before anything is built from them (the memory plan, the model)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    fix = "fix config.json, or re-save the model with save_pretrained"
    sizes = {}
    for name in SIZE_FIELDS:
        value = getattr(text, name, None)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} is {value!r}; sizes are whole numbers of 1 or more",
                             where=where, fix=fix)  # fmt: skip
        sizes[name] = value
    hidden, layers = sizes.get("hidden_size", 1), sizes.get("num_hidden_layers", 1)
    intermediate = sizes.get("intermediate_size", 4 * hidden)
    estimate = (
        2 * sizes.get("vocab_size", 1) * hidden + layers * (4 * hidden + 3 * intermediate) * hidden
    )
    if layers > MAX_LAYERS or estimate > MAX_PARAMETERS:
        raise InputError(
            f"this config describes {layers:,} layers and about {estimate:.1e} parameters, "
            f"beyond any model prefcurate plans ({MAX_LAYERS:,} layers, {MAX_PARAMETERS:.0e} "
            "parameters)",
            where=where,
            fix=fix,
        )


def _asks_for_code(path: Path) -> bool:
    try:
        return "auto_map" in json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def directory_fingerprint(path: Path) -> str:
    """SHA-256 over a model directory's config and weight files, by content.

    Hashing the bytes (not names or times) is what makes a reference cache safe to reuse.
    """
    digest = hashlib.sha256()
    for file in sorted(path.iterdir()):
        if file.name == "config.json" or file.suffix in (".safetensors", ".bin"):
            digest.update(file.name.encode())
            with file.open("rb") as handle:
                for block in iter(lambda h=handle: h.read(1 << 24), b""):
                    digest.update(block)
    return digest.hexdigest()


def _disable_dropout(model: nn.Module) -> dict[str, float]:
    zeroed: dict[str, float] = {}
    for key, value in model.config.to_dict().items():
        if isinstance(value, float) and ("dropout" in key or "pdrop" in key) and value:
            zeroed[key] = value
            setattr(model.config, key, 0.0)
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0
    return zeroed


def describe(loaded: LoadedModel) -> dict[str, Any]:
    """A small JSON-able summary of the model for run.json."""
    config = loaded.model.config
    return {
        "name": loaded.name,
        "model_type": config.model_type,
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
        "vocab_size": config.vocab_size,
        "fingerprint": loaded.fingerprint,
        "tokenizer": type(loaded.tokenizer).__name__,
        "config": json.loads(config.to_json_string(use_diff=True)),
    }
