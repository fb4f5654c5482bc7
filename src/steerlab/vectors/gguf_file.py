"""Control vectors in GGUF, the layout llama.cpp reads (``--control-vector``) and repeng writes.

The layout, as llama.cpp's loader and adapter code read it:

- ``general.architecture`` is ``controlvector``; ``controlvector.model_hint`` (repeng writes the
  model type, e.g. ``llama``; steerlab the hint a foreign vector came with, else the model id)
  and ``controlvector.layer_count`` are written for other readers (llama.cpp itself reads no
  metadata);
- one 1-D F32 tensor per layer, named ``direction.<k>``, all of the model's width;
- ``direction.<k>`` is added to the output of block ``k`` (0-based: the residual stream after the
  block's MLP, steerlab's ``blocks.k.hook_resid_post``) at every position, prompt included, times
  the strength given with ``--control-vector-scaled`` (1 with ``--control-vector``). llama.cpp
  rejects a file holding ``direction.0``: the output of block 0 cannot be steered there.

What GGUF has no key for (site, method, model id, norms, prompts digest, ...) is kept under
:data:`STEERLAB_KEY` as the JSON of ``SteeringVector.metadata()``; llama.cpp and repeng ignore it,
and a steerlab → GGUF → steerlab round trip loses nothing. This module reads and writes plain
tensors and metadata; the :class:`~steerlab.vectors.SteeringVector` methods build the value.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from steerlab._util.io import atomic_path
from steerlab.errors import VectorFileError
from steerlab.vectors.metadata import LAYER_TEXT

ARCH = "controlvector"
MODEL_HINT_KEY = f"{ARCH}.model_hint"
LAYER_COUNT_KEY = f"{ARCH}.layer_count"
STEERLAB_KEY = "steerlab.metadata"
TENSOR_PREFIX = "direction."
GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class ControlVectorFile:
    """What a control-vector GGUF holds: ``directions`` (layer -> float32 ``(n_embd,)``), the
    ``model_hint`` (``""`` when absent) and steerlab's metadata when steerlab wrote the file."""

    directions: dict[int, torch.Tensor]
    model_hint: str
    steerlab_metadata: dict[str, Any] | None
    f16: bool = False  # some direction was stored as F16 (llama.cpp reads only F32)


def is_gguf(path: Path) -> bool:
    """Whether ``path`` starts with the GGUF magic bytes (any GGUF: a model or a vector)."""
    try:
        with path.open("rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def write_control_vector(
    path: Path,
    directions: Mapping[int, torch.Tensor],
    model_hint: str,
    steerlab_metadata: Mapping[str, Any] | None,
) -> Path:
    """Write ``directions`` as a control-vector GGUF at ``path`` (atomically)."""
    import gguf

    for layer in directions:
        if not LAYER_TEXT.fullmatch(str(layer)):
            raise VectorFileError(f"{path}: layer {layer} has no control-vector tensor name")
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), ARCH)
        writer.add_string(MODEL_HINT_KEY, model_hint or "unknown")  # repeng needs a non-empty one
        writer.add_uint32(LAYER_COUNT_KEY, len(directions))
        if steerlab_metadata is not None:
            writer.add_string(STEERLAB_KEY, json.dumps(dict(steerlab_metadata)))
        for layer, direction in sorted(directions.items()):
            data = direction.detach().to("cpu", torch.float32).contiguous().numpy()
            writer.add_tensor(f"{TENSOR_PREFIX}{layer}", data)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


def _string_field(reader: Any, key: str) -> str | None:
    """A string metadata value (read from the field's parts, as every gguf release allows)."""
    import gguf

    field = reader.get_field(key)
    if field is None:
        return None
    if not field.types or field.types[0] != gguf.GGUFValueType.STRING:
        raise VectorFileError(f"metadata key {key} is not a string")
    try:
        return bytes(field.parts[-1]).decode("utf-8")
    except (UnicodeDecodeError, IndexError, TypeError) as e:
        raise VectorFileError(f"metadata key {key} is not UTF-8 text ({e})") from e


def layer_of(name: str, where: Path | str) -> int:
    """The layer of a ``direction.<k>`` tensor name: ``k`` in plain ASCII digits, no leading
    zero (so two names never map to one layer), at most six digits."""
    suffix = name[len(TENSOR_PREFIX) :] if name.startswith(TENSOR_PREFIX) else ""
    if not LAYER_TEXT.fullmatch(suffix):
        raise VectorFileError(
            f"{where}: tensor {name[:80]!r} is not a direction.<layer> tensor of a control vector"
        )
    return int(suffix)


def read_control_vector(path: Path) -> ControlVectorFile:
    """Read a control-vector GGUF; anything else is a :class:`VectorFileError` naming ``path``."""
    import gguf

    if not is_gguf(path):
        raise VectorFileError(f"{path}: not a GGUF file")
    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError, IndexError, KeyError, TypeError) as e:
        raise VectorFileError(f"{path}: not a readable GGUF file ({e})") from e
    try:
        arch = _string_field(reader, "general.architecture")
        if arch != ARCH:
            raise VectorFileError(
                f"general.architecture is {arch!r}, not {ARCH!r}: a model or another adapter"
                if arch is not None
                else "it has no general.architecture key"
            )
        hint = _string_field(reader, MODEL_HINT_KEY) or ""
        raw_meta = _string_field(reader, STEERLAB_KEY)
    except VectorFileError as e:
        raise VectorFileError(f"{path}: not a control vector ({e})") from e
    directions: dict[int, torch.Tensor] = {}
    half = False
    for tensor in reader.tensors:
        layer = layer_of(str(tensor.name), path)
        if layer in directions:
            raise VectorFileError(f"{path}: two tensors for layer {layer}")
        if tensor.tensor_type not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            raise VectorFileError(
                f"{path}: tensor {tensor.name} is {tensor.tensor_type.name}, not F32 or F16"
            )
        half = half or tensor.tensor_type == gguf.GGMLQuantizationType.F16
        data = np.asarray(tensor.data)
        if data.ndim == 2 and 1 in data.shape:  # (1, n): one direction stored as a row
            data = data.reshape(-1)
        if data.ndim != 1 or data.shape[0] == 0:
            raise VectorFileError(
                f"{path}: tensor {tensor.name} has shape {tuple(data.shape)}, not one direction"
            )
        directions[layer] = torch.from_numpy(data.astype(np.float32, copy=True))
    if not directions:
        raise VectorFileError(f"{path}: a control-vector GGUF without any direction tensor")
    widths = {int(t.shape[0]) for t in directions.values()}
    if len(widths) != 1:
        raise VectorFileError(f"{path}: direction tensors of different widths {sorted(widths)}")
    meta: dict[str, Any] | None = None
    if raw_meta is not None:
        try:
            parsed = json.loads(raw_meta)
        except (ValueError, RecursionError) as e:
            raise VectorFileError(f"{path}: {STEERLAB_KEY} is not JSON ({e})") from e
        if not isinstance(parsed, dict):
            raise VectorFileError(f"{path}: {STEERLAB_KEY} is not a JSON object")
        meta = parsed
    return ControlVectorFile(
        directions=directions, model_hint=hint, steerlab_metadata=meta, f16=half
    )
