"""Opt-in reduced-precision CPU modes: matrix products in bfloat16 or int8, the rest in float32.

Every linear layer of the model (attention and MLP projections, the LM head) keeps a bfloat16
copy of its weight and multiplies in bfloat16 with float32 accumulation; its output goes back to
the model's dtype at once. The residual stream, norms, attention softmax, rotary embeddings,
logits and every steering edit stay in float32, so steering semantics (which positions, which
site, the algebra of add/ablate/clamp) do not change; only the rounding inside the matmuls does.
On CPUs with AVX-512 BF16 or AMX this roughly doubles matmul throughput. A CPU without them
(AVX2 only) has no bf16 GEMM of its own: PyTorch's converting path is several times slower
than float32 there, so the layer reproduces the same rounding in float32 instead (operands
rounded to bf16, whose products are exact in float32, float32 accumulation, the output rounded
to bf16): the mode's numerics at about float32's speed, equal to the native product up to the
order of summation. It is a speed mode, not the reference:
``benchmarks/bench_sweep.py --matmul-dtype bf16`` reports its greedy-token agreement with
float32 next to its speed.

``int8`` replaces each linear layer whose int8 output stays within an error bound on a
calibration text by :class:`~steerlab.models.int8_linear.Int8DynamicLinear` (int8 weights per
output channel, each token's activations quantized with its own scale, int32 accumulation); the
others stay float32. The x86 int8 GEMM runs on AVX2, so it is the speed mode for CPUs without
native bf16. Whether either mode moves the reliability run's findings more than a second
float32 seed does is what ``benchmarks/check_findings.py`` measures.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from steerlab.errors import SteerlabError
from steerlab.models.int8_linear import LinearSlot, quantize_linears

MATMUL_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "int8": torch.int8}


class LowPrecisionLinear(nn.Module):
    """``nn.Linear`` (or transformers' GPT-2 ``Conv1D``) computing its product in ``dtype``.

    ``emulate``: keep the weight in float32, rounded to ``dtype``, and round the input and the
    output to ``dtype`` around a float32 product (for CPUs without a native ``dtype`` GEMM)."""

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        dtype: torch.dtype,
        emulate: bool = False,
    ) -> None:
        super().__init__()
        # (out, in) like nn.Linear; no gradients (steerlab never trains the model)
        low = weight.detach().to(dtype)
        stored = low.float() if emulate else low
        self.weight = nn.Parameter(stored.contiguous(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.out_features, self.in_features = self.weight.shape
        self.compute_dtype = dtype
        self.emulate = emulate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.emulate:  # bf16 x bf16 products are exact in float32; float32 accumulation
            rounded = x.to(self.compute_dtype).float()
            y = nn.functional.linear(rounded, self.weight.float()).to(self.compute_dtype)
        else:
            y = nn.functional.linear(x.to(self.weight.dtype), self.weight)
        y = y.to(x.dtype)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        how = (
            f"{self.compute_dtype}, emulated in float32" if self.emulate else str(self.weight.dtype)
        )
        return f"in={self.in_features}, out={self.out_features}, dtype={how}"


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX-512 BF16 or AMX on x86; read from
    Linux's ``/proc/cpuinfo`` once, False where it cannot be read, so elsewhere bf16 matmuls are
    emulated)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool({"avx512_bf16", "amx_bf16"} & flags)
    except OSError:
        pass
    return False


def emulated_matmuls(hf: nn.Module) -> bool:
    """Whether any linear layer of ``hf`` multiplies in an emulated low precision."""
    return any(isinstance(m, LowPrecisionLinear) and m.emulate for m in hf.modules())


def resolve(name: str | torch.dtype | None) -> torch.dtype | None:
    if name is None or isinstance(name, torch.dtype):
        return name
    if name not in MATMUL_DTYPES:
        raise SteerlabError(f"unknown matmul dtype {name!r}: use one of {sorted(MATMUL_DTYPES)}")
    return MATMUL_DTYPES[name]


def precision_label(
    dtype: str | torch.dtype | None, matmul_dtype: str | None, emulated: bool = False
) -> str:
    """A model's numeric precision in words, as reports and manifests name it: ``"float32"``,
    or ``"float32, bf16 matmuls"`` in the reduced-precision matmul mode (``"float32, bf16
    matmuls (emulated)"`` where the CPU lacks them and float32 reproduces their rounding)."""
    base = str(dtype or "float32").removeprefix("torch.")
    if not matmul_dtype:
        return base
    return f"{base}, {matmul_dtype} matmuls" + (" (emulated)" if emulated else "")


def linear_layers(hf: nn.Module) -> list[LinearSlot]:
    """Every linear layer of ``hf`` (``nn.Linear`` or transformers' GPT-2 ``Conv1D``) with where
    it sits and its weight as (out, in), the layout of ``nn.Linear``."""
    from transformers.pytorch_utils import Conv1D

    conv1d: Any = Conv1D
    slots: list[LinearSlot] = []
    for parent in hf.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Linear) or (conv1d is not None and isinstance(child, conv1d)):
                weight: torch.Tensor = child.weight
                bias: torch.Tensor | None = child.bias
                if not isinstance(child, nn.Linear):  # Conv1D stores the weight as (in, out)
                    weight = weight.t()
                slots.append(LinearSlot(parent, name, child, weight, bias))
    return slots


def lower_matmuls(
    hf: nn.Module,
    dtype: torch.dtype,
    calibration: Sequence[torch.Tensor] = (),
    emulate: bool | None = None,
) -> int:
    """Replace the linear layers in ``hf`` by ones multiplying in ``dtype``; returns how many.

    bfloat16: every linear layer becomes a :class:`LowPrecisionLinear`, emulated in float32 on
    a CPU without native bf16 (``emulate``, by default read from the CPU). int8: the layers that
    pass :func:`~steerlab.models.int8_linear.quantize_linears`'s error bound on the
    ``calibration`` token ids become :class:`~steerlab.models.int8_linear.Int8DynamicLinear`.
    A weight tied to the input embedding (the LM head of most small models) gets its own copy,
    so the embedding lookup stays in the model's dtype.
    """
    slots = linear_layers(hf)
    if dtype == torch.int8:
        return quantize_linears(hf, slots, calibration)
    for slot in slots:
        on_cpu = slot.weight.device.type == "cpu"
        emulated = (on_cpu and not cpu_has_native_bf16()) if emulate is None else emulate
        new = LowPrecisionLinear(slot.weight, slot.bias, dtype, emulated).to(slot.weight.device)
        setattr(slot.parent, slot.name, new)
    return len(slots)
