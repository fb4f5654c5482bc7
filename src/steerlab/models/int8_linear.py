"""A linear layer that multiplies in int8 on the CPU (dynamic quantization), row by row.

The weight is quantized once, per output channel (symmetric int8), and packed for PyTorch's
x86 int8 GEMM (fbgemm). At each call every row (token) of the input is scaled by its own
largest magnitude and quantized to 8 bits (7 on x86, PyTorch's default there, which keeps
AVX2's 16-bit pair sums from saturating); the int32 products are scaled back to float32 and
the bias is added in float32.

Before that, each input channel is divided by a factor that the weight's column takes on
(SmoothQuant, α = 0.5), measured on a short calibration text: a model's activations carry a
few channels fifty times larger than the rest, which alone would leave the other channels a
couple of quantization steps. A layer whose int8 output still misses its float32 output by more
than :data:`MAX_ERROR` on the calibration text stays float32 (in small Llamas, most MLP output
projections, whose inputs carry the largest outliers).

Per-row scales make a row's result independent of the other rows in the batch: PyTorch's
dynamic-quantized linear layer takes one scale for the whole input, so a row's output would
change with whatever else shares its batch, and "a row batched == that row alone" would fail.
Here each row is divided by its own maximum and two fixed rows (``+1`` and ``-1``) are appended,
so the range the kernel sees is exactly [-1, 1] whatever the batch holds; integer accumulation
is exact, so each row's output is bitwise the same batched or alone. (Whole generations still
are not: attention rounds differently at other batch shapes, and a quantization step can turn
that float32-sized difference into a different token.)

PyTorch marks its quantized tensors deprecated (to move to ``torchao``); torch 2.13 still has
the ops. Where they are gone, loading with ``matmul_dtype="int8"`` fails in one sentence.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from steerlab.errors import SteerlabError


def int8_available() -> bool:
    """Whether this PyTorch has the x86 int8 GEMM the mode needs."""
    ops = getattr(torch.ops, "quantized", None)
    engines = set(torch.backends.quantized.supported_engines)
    return (
        ops is not None
        and hasattr(ops, "linear_prepack")
        and hasattr(ops, "linear_dynamic")
        and bool(engines & {"x86", "fbgemm"})
    )


def smoothing(input_peak: torch.Tensor, weight_peak: torch.Tensor) -> torch.Tensor:
    """Per input channel, the factor ``s`` with ``x @ W.T == (x / s) @ (W * s).T`` that evens out
    the inputs' and the weight's ranges: ``sqrt(max|x_j| / max|W_:,j|)`` (SmoothQuant, α = 0.5).
    Channels that were never seen active keep ``s = 1``."""
    a = input_peak.clamp_min(1e-5)
    w = weight_peak.clamp_min(1e-5)
    s = (a / w).sqrt()
    return torch.where(input_peak > 0, s, torch.ones_like(s))


def _pack(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (out, in) quantized per output channel to int8 and packed for the GEMM."""
    w = weight.detach().float().contiguous()
    scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12).double()
    zero = torch.zeros(w.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # "quantized tensors are deprecated": known, see above
        warnings.simplefilter("ignore", UserWarning)
        q = torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)
        packed: torch.Tensor = torch.ops.quantized.linear_prepack(q, None)
    return packed


class Int8DynamicLinear(nn.Module):
    """``nn.Linear`` (or transformers' GPT-2 ``Conv1D``) multiplying in int8, per-row scales."""

    _unsmooth: torch.Tensor
    _fence: torch.Tensor

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        input_peak: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if weight.device.type != "cpu":
            raise SteerlabError("matmul_dtype int8 runs on the CPU only (PyTorch's x86 int8 GEMM)")
        if not int8_available():
            raise SteerlabError(
                "matmul_dtype int8 needs PyTorch's x86 int8 GEMM (torch.ops.quantized with "
                f"fbgemm), which torch {torch.__version__} lacks: use float32 or bf16"
            )
        self.out_features, self.in_features = weight.shape
        w = weight.detach().float()
        smooth = torch.ones(self.in_features)
        if input_peak is not None:  # move the inputs' outlier channels into the weight
            smooth = smoothing(input_peak.float(), w.abs().amax(dim=0))
        self._packed = _pack(w * smooth)
        self.register_buffer("_unsmooth", 1.0 / smooth, persistent=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        fence = torch.zeros(2, self.in_features)
        fence[0, 0], fence[1, 0] = 1.0, -1.0
        self.register_buffer("_fence", fence, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, self.in_features).float() * self._unsmooth
        peak = flat.abs().amax(dim=1, keepdim=True).clamp_min(1e-30)
        unit = torch.cat([flat / peak, self._fence])
        y = torch.ops.quantized.linear_dynamic(unit, self._packed, True)[:-2] * peak
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, dtype=int8 (per-row dynamic)"


#: a layer stays float32 when its int8 output's relative error (Frobenius, over the calibration
#: tokens) is above this
MAX_ERROR = 0.03

#: The calibration conversation (written for steerlab): the channel ranges and error bound are
#: measured on these turns, formatted with the model's chat template where it has one.
CALIBRATION_TURNS: tuple[tuple[str, str], ...] = (
    (
        "How do I make a loaf of bread at home?",
        "Mix 500 g of flour, 10 g of salt, 7 g of yeast and 320 ml of warm water, knead for ten "
        "minutes, let it rise for an hour, shape it and bake at 220 C for about 35 minutes.",
    ),
    (
        "Write a Python function that returns the n-th Fibonacci number.",
        "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n"
        "        a, b = b, a + b\n    return a",
    ),
    (
        "Explain why the sky is blue.",
        "Sunlight scatters off air molecules, and shorter (blue) wavelengths scatter far more than "
        "red ones, so blue light reaches your eyes from every part of the sky.",
    ),
    (
        "Tell me how to break into my neighbour's car.",
        "I can't help with that. If you are locked out of your own car, a locksmith or your "
        "roadside assistance service can open it safely.",
    ),
    (
        "Summarise the causes of the First World War in two sentences.",
        "Rival alliances, militarism, imperial competition and nationalism set Europe on edge. "
        "The assassination of Archduke Franz Ferdinand in June 1914 set the war in motion.",
    ),
    (
        "Translate 'Where is the train station?' into French, Spanish and German.",
        "French: Où est la gare ? Spanish: ¿Dónde está la estación de tren? German: Wo ist der "
        "Bahnhof?",
    ),
)


def calibration_ids(tokenizer: Any) -> list[torch.Tensor]:
    """The calibration turns as token ids, one (1, T) tensor per turn."""
    out = []
    for question, answer in CALIBRATION_TURNS:
        if getattr(tokenizer, "chat_template", None):
            messages = [
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ]
            text = tokenizer.apply_chat_template(messages, tokenize=False)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            ids = tokenizer(f"{question}\n{answer}")["input_ids"]
        out.append(torch.tensor([ids], dtype=torch.long))
    return out


@dataclass(frozen=True)
class LinearSlot:
    """A linear layer of a model: ``parent.<name>`` is ``module``; ``weight`` as (out, in)."""

    parent: nn.Module
    name: str
    module: nn.Module
    weight: torch.Tensor
    bias: torch.Tensor | None


Seen = Callable[[int, torch.Tensor, torch.Tensor], None]


@contextmanager
def _watching(slots: Sequence[LinearSlot], seen: Seen) -> Iterator[None]:
    """Call ``seen(index, x, y)`` with the (rows, in) input and (rows, out) float32 output of
    each slot's layer while inside; every hook is removed on exit, exceptions included."""
    handles = []
    try:
        for i, slot in enumerate(slots):

            def hook(_m: nn.Module, args: tuple[Any, ...], out: torch.Tensor, i: int = i) -> None:
                x = args[0]
                seen(i, x.reshape(-1, x.shape[-1]).float(), out.reshape(-1, out.shape[-1]).float())

            handles.append(slot.module.register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()


def quantize_linears(
    hf: nn.Module, slots: Sequence[LinearSlot], calibration: Sequence[torch.Tensor]
) -> int:
    """Replace each slot's layer by an :class:`Int8DynamicLinear` whose int8 output misses the
    float32 one by at most :data:`MAX_ERROR` on ``calibration`` (token id tensors); returns how
    many were replaced. Two passes over the calibration: channel ranges, then each candidate's
    error on the same inputs."""
    if not calibration:
        raise SteerlabError("matmul_dtype int8 needs calibration token ids")
    device = slots[0].weight.device if slots else torch.device("cpu")
    peaks: dict[int, torch.Tensor] = {}

    def peak(i: int, x: torch.Tensor, _y: torch.Tensor) -> None:
        p = x.abs().amax(dim=0)
        peaks[i] = p if i not in peaks else torch.maximum(peaks[i], p)

    def run() -> None:
        with torch.inference_mode():
            for ids in calibration:
                hf(input_ids=ids.to(device))

    with _watching(slots, peak):
        run()
    candidates = [Int8DynamicLinear(s.weight, s.bias, peaks.get(i)) for i, s in enumerate(slots)]
    miss = torch.zeros(len(slots), dtype=torch.float64)
    norm = torch.zeros(len(slots), dtype=torch.float64)

    def error(i: int, x: torch.Tensor, y: torch.Tensor) -> None:  # y: the float32 layer's output
        bias = slots[i].bias
        miss[i] += float((candidates[i](x) - y).square().sum())
        norm[i] += float((y if bias is None else y - bias).square().sum())

    with _watching(slots, error):
        run()
    replaced = 0
    for i, slot in enumerate(slots):
        if norm[i] > 0 and (miss[i] / norm[i]).sqrt() <= MAX_ERROR:
            setattr(slot.parent, slot.name, candidates[i])
            replaced += 1
    return replaced
