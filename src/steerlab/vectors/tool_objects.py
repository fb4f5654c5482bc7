"""The vector objects of repeng and steering-vectors, read into plain per-layer tensors and made
from them; :class:`~steerlab.vectors.SteeringVector` builds the value.

What their layer numbers mean (read from their code; both hook the model's decoder layer list):

- repeng ``ControlVector.directions[k]``: ``ControlModel`` adds ``coeff * directions[k]`` to the
  output of decoder layer ``k`` (0-based) at every non-pad position: steerlab's
  ``blocks.k.hook_resid_post``, ``add``, ``scale="diff"``, ``alpha=coeff``. (repeng reads the
  last layer's direction from ``hidden_states[-1]``, which Hugging Face models return after the
  final norm; every other layer is read where it is applied.)
- steering-vectors ``SteeringVector(layer_activations, layer_type)``: a forward hook on decoder
  layer ``k`` (``decoder_block``: steerlab ``resid_post``), its attention module (``self_attn``:
  ``attn_out``) or its MLP (``mlp``: ``mlp_out``) adds ``multiplier * layer_activations[k]``
  from ``min_token_index`` on (default 0: every position). Its ``input_layernorm`` and
  ``post_attention_layernorm`` types steer a normalised residual, which is no steerlab site.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from steerlab.errors import SteerlabError

LAYER_TYPE_POINTS = {"decoder_block": "resid_post", "self_attn": "attn_out", "mlp": "mlp_out"}
POINT_LAYER_TYPES = {point: kind for kind, point in LAYER_TYPE_POINTS.items()}


def _layer_tensors(mapping: object, what: str) -> dict[int, torch.Tensor]:
    if not isinstance(mapping, Mapping) or not mapping:
        raise SteerlabError(f"{what} must be a non-empty mapping of layer index -> direction")
    out = {}
    for key, value in mapping.items():
        if isinstance(key, bool) or not isinstance(key, int | np.integer) or int(key) < 0:
            raise SteerlabError(
                f"{what} has key {key!r}, not a layer index >= 0 (count a negative index from "
                "the model's layer count first)"
            )
        tensor = value if torch.is_tensor(value) else torch.from_numpy(np.array(value, copy=True))
        if tensor.dim() != 1:
            raise SteerlabError(
                f"{what}[{key}] has shape {tuple(tensor.shape)}, not one direction (d_model,)"
            )
        out[int(key)] = tensor.detach().to("cpu", torch.float32).clone()
    return out


def repeng_parts(control_vector: Any) -> tuple[dict[int, torch.Tensor], str]:
    """``(directions, model_type)`` of a repeng ``ControlVector`` (read by attribute)."""
    if not hasattr(control_vector, "directions") or not hasattr(control_vector, "model_type"):
        raise SteerlabError(
            f"expected a repeng ControlVector (with .directions and .model_type), got "
            f"{type(control_vector).__name__}"
        )
    model_type = control_vector.model_type
    return _layer_tensors(control_vector.directions, "ControlVector.directions"), str(model_type)


def make_repeng(directions: Mapping[int, torch.Tensor], model_type: str) -> Any:
    """A repeng ``ControlVector`` holding ``directions`` (float32 numpy arrays)."""
    control_vector_class = _import("repeng", "ControlVector")
    return control_vector_class(
        model_type=model_type,
        directions={k: v.numpy().astype(np.float32, copy=True) for k, v in directions.items()},
    )


def steering_vectors_parts(steering_vector: Any) -> tuple[dict[int, torch.Tensor], str]:
    """``(directions, steerlab point)`` of a steering-vectors ``SteeringVector``."""
    if not hasattr(steering_vector, "layer_activations"):
        raise SteerlabError(
            f"expected a steering-vectors SteeringVector (with .layer_activations), got "
            f"{type(steering_vector).__name__}"
        )
    layer_type = getattr(steering_vector, "layer_type", "decoder_block")
    if layer_type not in LAYER_TYPE_POINTS:
        raise SteerlabError(
            f"steering-vectors layer_type {layer_type!r} has no steerlab site (decoder_block, "
            "self_attn and mlp do: resid_post, attn_out, mlp_out)"
        )
    dirs = _layer_tensors(steering_vector.layer_activations, "SteeringVector.layer_activations")
    return dirs, LAYER_TYPE_POINTS[layer_type]


def make_steering_vectors(directions: Mapping[int, torch.Tensor], point: str) -> Any:
    """A steering-vectors ``SteeringVector`` holding ``directions`` at ``point``'s layer type."""
    if point not in POINT_LAYER_TYPES:
        raise SteerlabError(
            f"steering-vectors has no layer type for {point} (it steers resid_post as "
            "decoder_block, attn_out as self_attn, mlp_out as mlp)"
        )
    steering_vector_class = _import("steering_vectors", "SteeringVector")
    return steering_vector_class(
        layer_activations={k: v.clone() for k, v in directions.items()},
        layer_type=POINT_LAYER_TYPES[point],
    )


def _import(package: str, name: str) -> Any:
    import importlib

    try:
        module = importlib.import_module(package)
    except ImportError as e:
        raise SteerlabError(
            f"{package} is not installed: pip install {package.replace('_', '-')}"
        ) from e
    except AttributeError as e:  # repeng 0.4 uses np.float_, which numpy 2 removed
        raise SteerlabError(
            f"{package} cannot be imported with numpy {np.__version__} ({e}); repeng 0.4 needs "
            "numpy < 2"
        ) from e
    return getattr(module, name)
