"""What the workflows share: the model config, a file reference, the model loaded where the work
runs and its description, the environment a run records, and :class:`ModelWorkflow` (a workflow
over one model whose config has an ``out`` run directory and a ``model`` section, as
eval-questions, select-coefficients and classify have)."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from pydantic import BeforeValidator, Field, WithJsonSchema, model_validator
from pydantic_core import PydanticCustomError

from steerlab._util.strict import Strict
from steerlab._util.version import __version__
from steerlab.backends.registry import BACKENDS, join_or
from steerlab.runs.config import RunConfig
from steerlab.runs.runner import Runtime, Workflow

if TYPE_CHECKING:
    from steerlab.judge.client import JudgeConfig
    from steerlab.models import Model

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- configs


def _known_backend(value: Any) -> Any:
    """A backend named in the registry; any other value fails as a ``Literal`` of the names
    would (same error type and message)."""
    if not isinstance(value, str) or value not in BACKENDS:
        expected = join_or([repr(b) for b in BACKENDS])
        raise PydanticCustomError(
            "literal_error", "Input should be {expected}", {"expected": expected}
        )
    return value


#: a backend name from :data:`steerlab.backends.registry.REGISTRY`
BackendName = Annotated[
    str,
    BeforeValidator(_known_backend),
    WithJsonSchema({"enum": list(BACKENDS), "type": "string"}),
]


class EvalModelCfg(Strict):
    name: str = "embedded"
    backend: BackendName = "hf"
    device: str | None = None
    dtype: str | None = None
    #: CPU speed modes: linear layers multiply in bf16 or int8, residual/steering stay in dtype.
    #: ``auto``: on a CPU with a backend that lowers matmuls, bf16 where the CPU has native bf16
    #: and int8 elsewhere; none on a GPU (see :func:`resolve_matmul_dtype`); ``None``: dtype
    #: throughout
    matmul_dtype: Literal["bf16", "int8", "auto"] | None = None
    chat: bool = True
    #: keyword arguments of the engine (backend ``vllm`` only), e.g. ``tensor_parallel_size: 2``
    engine_args: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _engine_args_need_an_engine(self) -> EvalModelCfg:
        if self.engine_args and self.backend != "vllm":
            raise ValueError(
                f"engine_args ({', '.join(sorted(self.engine_args))}) are for backend vllm, "
                f"not {self.backend}"
            )
        return self


def resolve_matmul_dtype(
    matmul_dtype: str | None,
    device: str | None,
    backend: str,
    int8_gemm: bool | None = None,
    native_bf16: bool | None = None,
) -> str | None:
    """The matmul dtype a model is loaded with. ``auto``, on a CPU with a backend that lowers
    matmuls (``hf`` or ``nnsight``), is ``"bf16"`` where the CPU multiplies bf16 natively
    (``native_bf16``: AVX-512 BF16 or AMX, by default read from the CPU), else ``"int8"`` where
    PyTorch has its x86 int8 GEMM (``int8_gemm``, by default read from this PyTorch), else
    ``None``. Both modes' reliability findings moved no more than a second float32 seed's in
    ``benchmarks/check_findings.py``; bf16 is the faster where it is native, and without it a
    bf16 product is no faster than float32. ``None`` elsewhere (a GPU runs bf16 already; vLLM
    and TransformerLens keep their own linear layers). Other values pass through."""
    if matmul_dtype != "auto":
        return matmul_dtype
    from steerlab.backends.registry import REGISTRY
    from steerlab.models import default_device
    from steerlab.models.int8_linear import int8_available
    from steerlab.models.precision import cpu_has_native_bf16

    on = str(device) if device is not None else str(default_device())
    lowers = backend in REGISTRY and REGISTRY[backend].lowers_matmuls
    if not (lowers and on.startswith("cpu")):
        return None
    if cpu_has_native_bf16() if native_bf16 is None else native_bf16:
        return "bf16"
    available = int8_available() if int8_gemm is None else int8_gemm
    return "int8" if available else None


class JudgeCfg(Strict):
    """An OpenAI-compatible judge endpoint (see :class:`steerlab.judge.client.JudgeConfig`)."""

    url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = Field(default=8, ge=1)
    timeout_s: float = Field(default=60.0, gt=0, allow_inf_nan=False)  # one attempt
    max_retries: int = Field(default=4, ge=0, le=100)
    max_total_s: float = Field(default=600.0, gt=0, allow_inf_nan=False)  # a prompt's retry budget


def judge_config(cfg: JudgeCfg, cache_path: Path | None = None) -> JudgeConfig:
    """The judge client's settings for ``cfg`` (checks the URL, model and key variable: call it
    in a workflow's ``check`` so a bad judge is refused before anything is written)."""
    from steerlab.judge.client import JudgeConfig

    return JudgeConfig(
        url=cfg.url,
        model=cfg.model,
        api_key_env=cfg.api_key_env,
        concurrency=cfg.concurrency,
        timeout_s=cfg.timeout_s,
        max_retries=cfg.max_retries,
        max_total_s=cfg.max_total_s,
        cache_path=cache_path,
    )


class ModelRunConfig(RunConfig):
    """A config whose run directory is ``out`` and whose model is ``model``."""

    out: str
    model: EvalModelCfg = EvalModelCfg()


class FileRef(Strict):
    """A file as given (absolute path or shipped name) and the sha256 of its bytes."""

    path: str
    sha256: str


# ----------------------------------------------------------------------------- the model


@contextlib.contextmanager
def _transformers_bars(enabled: bool) -> Iterator[None]:
    """Switch transformers' own progress bars (weights loading) off while ``enabled`` is False,
    so ``--quiet`` means no bars at all; the previous setting is restored."""
    from transformers.utils import logging as hf_logging

    if enabled or not hf_logging.is_progress_bar_enabled():
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


@dataclass(frozen=True)
class ModelLoader:
    """Loads the config's model where the work runs (picklable: it goes to Ray workers)."""

    name: str
    backend: str
    device: str | None
    dtype: str | None
    chat: bool
    progress: bool = False
    matmul_dtype: str | None = None
    engine_args: tuple[tuple[str, Any], ...] = ()

    def __call__(self) -> Model:
        from steerlab.models import load_model

        with _transformers_bars(self.progress):
            return load_model(
                self.name,
                device=self.device,
                dtype=self.dtype,
                chat=self.chat,
                backend=self.backend,
                matmul_dtype=resolve_matmul_dtype(self.matmul_dtype, self.device, self.backend),
                **dict(self.engine_args),
            )


def model_loader(m: EvalModelCfg, progress: bool) -> ModelLoader:
    """The loader of a config's ``model`` section."""
    return ModelLoader(
        m.name,
        m.backend,
        m.device,
        m.dtype,
        m.chat,
        progress,
        m.matmul_dtype,
        tuple(sorted(m.engine_args.items())),
    )


def describe_model(model: Model) -> dict[str, Any]:
    """What the driver needs to know about a worker's model."""
    from torch import nn

    from steerlab.models.precision import emulated_matmuls

    hf = getattr(model, "hf", None)
    return {
        "name": model.name,
        "backend": model.backend.name,
        "n_layers": model.n_layers,
        "d_model": model.d_model,
        "dtype": str(model.dtype),
        "device": str(model.device),
        "matmul_emulated": isinstance(hf, nn.Module) and emulated_matmuls(hf),
    }


def environment_info(device: str, model_name: str) -> dict[str, Any]:
    """Versions, git commit, device: what a reader needs to reproduce a run."""
    import torch
    import transformers

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "steerlab_version": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "git_commit": commit or None,
        "device": device,
        "model": model_name,
    }


# ----------------------------------------------------------------------------- the workflow base


M = TypeVar("M", bound=ModelRunConfig)


class ModelWorkflow(Workflow[M]):
    """A workflow over one model: run directory, loader, description and manifest."""

    def run_path(self, cfg: M, run_id: str | None) -> Path:
        return Path(cfg.out)

    def loader(self, cfg: M, progress: bool) -> ModelLoader:
        return model_loader(cfg.model, progress)

    def describe(self) -> Any:
        return describe_model

    def on_open(self, rt: Runtime[M]) -> None:
        info = rt.info
        if not info:
            return
        logger.info("model %s loaded in %.1f s", info["name"], info["load_s"])
        rt.run.update_json(
            "manifest.json",
            workflow=self.name,
            environment=environment_info(info["device"], info["name"]),
            model={"spec": rt.cfg.model.name, **{k: v for k, v in info.items() if k != "load_s"}},
            config_digest=rt.cfg.digest(),
        )
