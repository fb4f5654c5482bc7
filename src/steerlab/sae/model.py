"""A sparse autoencoder as a value: weights, architecture, the site it reads, provenance.

Same algebra and tensor layout as sae-lens 6, so an SAE trained or published there means the same
thing here (``x`` is an activation at :attr:`SparseAutoencoder.site`, shape ``(..., d_in)``)::

    pre  = (x - b_dec·[apply_b_dec_to_input]) @ W_enc + b_enc     # (..., d_sae)
    pre *= ‖W_dec[j]‖                                             # topk with rescaling only
    acts = relu(pre)                                  standard
         = relu(pre) · [pre > threshold]              jumprelu
         = relu(pre) on the k largest of pre, else 0  topk
    x̂    = (acts / ‖W_dec[j]‖) @ W_dec + b_dec                     # the division: rescaling only

``W_enc`` (d_in, d_sae), ``b_enc`` (d_sae,), ``W_dec`` (d_sae, d_in), ``b_dec`` (d_in,),
``threshold`` (d_sae,). One unit of feature ``j``'s activation adds :meth:`output_row` ``(j)`` to
the reconstruction: the decoder row, divided by its norm when the SAE rescales.

This module needs torch only; sae-lens is used (optionally) by :mod:`steerlab.sae.load`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch

from steerlab.errors import SteerlabError
from steerlab.sites import POINTS, Site, SiteError, parse_point

ARCHITECTURES = ("standard", "jumprelu", "topk")
_HF_LAYER = re.compile(r"^model\.layers\.(\d+)$")


class SiteChecker(Protocol):
    """What can say whether a model exposes a site (a backend)."""

    def check_site(self, site: Site) -> None: ...


class ModelLike(Protocol):
    """The facts an SAE is checked against: a :class:`steerlab.models.Model` has them (this
    layer sits below ``steerlab.models``, so it names the attributes, not the class)."""

    @property
    def name(self) -> str: ...

    @property
    def n_layers(self) -> int: ...

    @property
    def d_model(self) -> int: ...

    @property
    def backend(self) -> SiteChecker: ...


class SAEError(SteerlabError):
    """An SAE cannot be read, is not supported, or does not fit the model."""


def site_from_hook(hook_name: str, layer: int | None = None, what: str = "SAE") -> Site:
    """The steerlab site an SAE's hook name denotes.

    Accepts TransformerLens names (``blocks.12.hook_resid_post``), a short point (``resid_post``)
    taking its layer from ``layer``, and a Hugging Face decoder-layer name (``model.layers.12``:
    its output is ``resid_post``). Anything else (``blocks.3.attn.hook_z``, ``hook_embed``, ...)
    is one error. A layer inside the name wins over ``layer``.
    """
    m = _HF_LAYER.match(hook_name)
    name = f"blocks.{m.group(1)}.hook_resid_post" if m is not None else hook_name
    try:
        named, point = parse_point(name)
    except SiteError as e:
        raise SAEError(
            f"{what} reads {hook_name!r}, which is not a steerlab site: steerlab steers "
            f"blocks.L.hook_POINT with POINT one of {', '.join(POINTS)}"
        ) from e
    chosen = named if named is not None else layer
    if chosen is None:
        raise SAEError(f"{what}: hook {hook_name!r} needs a layer: write blocks.L.hook_{point}")
    return Site(chosen, point)


@dataclass(frozen=True, eq=False)
class SparseAutoencoder:
    """An SAE reading (and writing) the activations at one site of a model.

    Attributes:
        W_enc: encoder ``(d_in, d_sae)``.
        b_enc: encoder bias ``(d_sae,)``.
        W_dec: decoder ``(d_sae, d_in)``; row ``j`` is feature ``j``'s direction.
        b_dec: decoder bias ``(d_in,)``.
        site: where it reads, e.g. ``Site(12, "resid_post")`` (``blocks.12.hook_resid_post``).
        architecture: ``standard`` (ReLU), ``jumprelu`` or ``topk``.
        threshold: per-feature JumpReLU threshold ``(d_sae,)`` (jumprelu only).
        k: active features per token (topk only).
        apply_b_dec_to_input: subtract ``b_dec`` from the input before encoding.
        rescale_acts_by_decoder_norm: topk only; see the module docstring.
        source: where it came from (a release/id or a path), for metadata.
        model_name: the model it was trained on (``unknown`` when not recorded).
        metadata: free-form details (original hook name, width, L0, neuronpedia id, ...).

    Tensors are kept as given (one dtype, one device); use :meth:`to` to move or cast.
    """

    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    site: Site
    architecture: str = "standard"
    threshold: torch.Tensor | None = None
    k: int | None = None
    apply_b_dec_to_input: bool = True
    rescale_acts_by_decoder_norm: bool = False
    source: str = ""
    model_name: str = "unknown"
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        name = self.source or "SAE"
        if self.architecture not in ARCHITECTURES:
            raise SAEError(
                f"{name}: architecture {self.architecture!r} is not supported (use one of "
                f"{', '.join(ARCHITECTURES)})"
            )
        if not isinstance(self.site, Site):
            raise SAEError(f"{name}: site must be a steerlab Site, got {self.site!r}")
        if self.W_enc.ndim != 2:
            raise SAEError(
                f"{name}: W_enc must be 2-D (d_in, d_sae), got {tuple(self.W_enc.shape)}"
            )
        d_in, d_sae = self.W_enc.shape
        shapes = {
            "b_enc": (self.b_enc, (d_sae,)),
            "W_dec": (self.W_dec, (d_sae, d_in)),
            "b_dec": (self.b_dec, (d_in,)),
        }
        if self.architecture == "jumprelu":
            if self.threshold is None:
                raise SAEError(f"{name}: a jumprelu SAE needs a threshold (d_sae,)")
            shapes["threshold"] = (self.threshold, (d_sae,))
        elif self.threshold is not None:
            raise SAEError(f"{name}: only jumprelu SAEs have a threshold")
        for key, (t, shape) in shapes.items():
            if tuple(t.shape) != shape:
                raise SAEError(
                    f"{name}: {key} has shape {tuple(t.shape)}, expected {shape} for "
                    f"W_enc (d_in={d_in}, d_sae={d_sae})"
                )
        tensors = [self.W_enc, *(t for t, _ in shapes.values())]
        if len({(t.dtype, t.device) for t in tensors}) != 1:
            raise SAEError(f"{name}: all weights must share one dtype and device")
        if not self.W_enc.is_floating_point():
            raise SAEError(f"{name}: weights must be floating point, got {self.W_enc.dtype}")
        if self.architecture == "topk":
            if isinstance(self.k, bool) or not isinstance(self.k, int) or not 1 <= self.k <= d_sae:
                raise SAEError(f"{name}: a topk SAE needs k in 1..{d_sae}, got {self.k!r}")
        elif self.k is not None:
            raise SAEError(f"{name}: only topk SAEs have k")
        if self.rescale_acts_by_decoder_norm and self.architecture != "topk":
            raise SAEError(f"{name}: rescale_acts_by_decoder_norm is a topk option")

    # ------------------------------------------------------------------ facts

    @property
    def d_in(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.W_enc.shape[1])

    @property
    def layer(self) -> int:
        return self.site.layer

    @property
    def hook_name(self) -> str:
        """The TransformerLens name of its site, e.g. ``blocks.12.hook_resid_post``."""
        return self.site.name

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    def describe(self) -> str:
        arch = self.architecture + (f" k={self.k}" if self.k is not None else "")
        return f"{self.source or 'SAE'} ({arch}, d_sae={self.d_sae}) at {self.hook_name}"

    def check_feature(self, feature: int) -> int:
        """``feature`` as an int, or a clear error when it is not a feature index."""
        if isinstance(feature, bool) or not isinstance(feature, int):
            raise SAEError(f"feature must be an int index, got {feature!r}")
        if not 0 <= feature < self.d_sae:
            raise SAEError(
                f"feature {feature} is out of range: {self.describe()} has features "
                f"0..{self.d_sae - 1}"
            )
        return feature

    def check_model(self, model: ModelLike) -> None:
        """Raise one :class:`SAEError` when this SAE cannot read ``model``'s activations."""
        n = model.n_layers
        if not 0 <= self.layer < n:
            raise SAEError(
                f"{self.describe()} reads layer {self.layer}, but {model.name} has {n} layers "
                f"(valid: 0..{n - 1})"
            )
        if self.d_in != model.d_model:
            raise SAEError(
                f"{self.describe()} reads activations of width d_in={self.d_in}, but "
                f"{model.name} has d_model {model.d_model} (an SAE for another model?)"
            )
        try:
            model.backend.check_site(self.site)
        except SiteError as e:
            raise SAEError(f"{self.describe()}: {e}") from e

    def to(
        self, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> SparseAutoencoder:
        """A copy with every weight on ``device`` and/or cast to ``dtype``."""

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype)

        return replace(
            self,
            W_enc=move(self.W_enc),
            b_enc=move(self.b_enc),
            W_dec=move(self.W_dec),
            b_dec=move(self.b_dec),
            threshold=None if self.threshold is None else move(self.threshold),
        )

    # ------------------------------------------------------------------ algebra

    def decoder_norms(self) -> torch.Tensor:
        """‖W_dec[j]‖ for every feature ``(d_sae,)``."""
        return self.W_dec.norm(dim=-1)

    def decoder_row(self, feature: int) -> torch.Tensor:
        """Feature ``feature``'s decoder row as stored ``(d_in,)`` (a copy)."""
        return self.W_dec[self.check_feature(feature)].clone()

    def output_row(self, feature: int) -> torch.Tensor:
        """What one unit of the feature's activation adds to the reconstruction ``(d_in,)``."""
        row = self.decoder_row(feature)
        return row * (1 / row.norm()) if self.rescale_acts_by_decoder_norm else row

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations ``(..., d_sae)`` of activations ``x`` ``(..., d_in)``."""
        sae_in = x.to(self.dtype)
        if self.apply_b_dec_to_input:
            sae_in = sae_in - self.b_dec
        pre = sae_in @ self.W_enc + self.b_enc
        if self.rescale_acts_by_decoder_norm:
            pre = pre * self.decoder_norms()
        return pre

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations ``(..., d_sae)`` of ``x`` ``(..., d_in)``."""
        pre = self.pre_acts(x)
        if self.architecture == "standard":
            return torch.relu(pre)
        if self.architecture == "jumprelu":
            assert self.threshold is not None
            return torch.relu(pre) * (pre > self.threshold).to(pre.dtype)
        assert self.k is not None
        values, idx = pre.topk(self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter(-1, idx, values.relu())

    def decode(self, acts: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``(..., d_in)`` of feature activations ``(..., d_sae)``."""
        acts = acts.to(self.dtype)
        if self.rescale_acts_by_decoder_norm:
            acts = acts * (1 / self.decoder_norms())  # as sae-lens computes it
        return acts @ self.W_dec + self.b_dec

    def feature_acts(self, x: torch.Tensor, feature: int) -> torch.Tensor:
        """Activation ``(...,)`` of one feature on ``x`` ``(..., d_in)``."""
        return self.encode(x)[..., self.check_feature(feature)]

    def error(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction error ``x - decode(encode(x))`` ``(..., d_in)``."""
        return x.to(self.dtype) - self.decode(self.encode(x))
