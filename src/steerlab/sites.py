"""Named hook sites (TransformerLens names): the site vocabulary every layer above speaks.

A site is a point in the residual computation of one block, named as TransformerLens names it:

- ``blocks.L.hook_resid_pre``  the residual stream entering block ``L``;
- ``blocks.L.hook_attn_out``   what the attention sub-block adds to the residual;
- ``blocks.L.hook_resid_mid``  ``resid_pre + attn_out`` (sequential blocks only);
- ``blocks.L.hook_mlp_out``    what the MLP sub-block adds to the residual;
- ``blocks.L.hook_resid_post`` the residual stream leaving block ``L`` (= ``resid_pre(L+1)``).

Sequential blocks (GPT-2, LLaMA, Mistral, Qwen, Gemma): ``resid_mid = resid_pre + attn_out`` and
``resid_post = resid_mid + mlp_out``. Parallel-residual blocks (GPT-NeoX/Pythia, Phi, GPT-J):
``resid_post = resid_pre + attn_out + mlp_out``; they have no ``resid_mid``.

Short forms (``resid_post`` plus a layer given separately) are accepted everywhere a name is.
:func:`parse_site` is the one parser. Where each site lives in a given architecture is the
backends' business (:mod:`steerlab.backends.architectures`); :func:`check_point` turns what they
know (parallel-residual or not, or no sub-block table) into one error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from steerlab.errors import SteerlabError

# In the order a forward pass reaches them inside one block.
POINTS = ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post")
_ORDER = {p: i for i, p in enumerate(POINTS)}
_NAME = re.compile(r"^blocks\.(\d+)\.hook_([a-z_]+)$")


class SiteError(SteerlabError):
    """A site name is malformed, or the model cannot expose that site."""


@dataclass(frozen=True)
class Site:
    """One hook site: block ``layer`` and ``point`` (one of :data:`POINTS`)."""

    layer: int
    point: str

    def __post_init__(self) -> None:
        if self.point not in POINTS:
            raise SiteError(f"unknown hook point {self.point!r}: use one of {', '.join(POINTS)}")
        if not isinstance(self.layer, int) or self.layer < 0:
            raise SiteError(f"a site needs a layer >= 0, got {self.layer!r}")

    @property
    def name(self) -> str:
        """The TransformerLens name, e.g. ``blocks.8.hook_resid_post``."""
        return f"blocks.{self.layer}.hook_{self.point}"

    @property
    def order(self) -> tuple[int, int]:
        """Sort key in forward order (layer, then position inside the block)."""
        return (self.layer, _ORDER[self.point])

    def __str__(self) -> str:
        return self.name


def parse_point(name: str) -> tuple[int | None, str]:
    """``resid_post`` -> ``(None, 'resid_post')``; ``blocks.8.hook_mlp_out`` -> ``(8, 'mlp_out')``.

    Also accepts ``hook_resid_post`` (TransformerLens's short hook name).
    """
    short = name[5:] if name.startswith("hook_") else name
    if short in POINTS:
        return None, short
    m = _NAME.match(name)
    if m is not None and m.group(2) in POINTS:
        return int(m.group(1)), m.group(2)
    raise SiteError(
        f"unknown hook site {name!r}: use blocks.L.hook_POINT or POINT with a layer, "
        f"POINT one of {', '.join(POINTS)}"
    )


def parse_site(name: str, layer: int | None = None) -> Site:
    """One :class:`Site` from a full name, or a short point name plus ``layer``.

    A full name with a ``layer`` that disagrees is an error (it would silently pick one).
    """
    named_layer, point = parse_point(name)
    if named_layer is not None and layer is not None and named_layer != layer:
        raise SiteError(f"site {name!r} names layer {named_layer}, but layer {layer} was given")
    chosen = named_layer if named_layer is not None else layer
    if chosen is None:
        raise SiteError(f"site {name!r} needs a layer: write blocks.L.hook_{point}")
    return Site(int(chosen), point)


# ----------------------------------------------------------------------------- availability


def check_point(point: str, model_type: str, model_name: str, parallel: bool | None) -> None:
    """Raise one clear error when an architecture cannot expose ``point``.

    ``parallel``: whether the blocks are parallel-residual (no ``resid_mid``); None means the
    architecture has no sub-block table (only resid_pre/post work).
    """
    if point in ("resid_pre", "resid_post"):
        return
    if parallel is None:
        raise SiteError(
            f"hook site {point!r} is not available on {model_name} (architecture "
            f"{model_type!r} has no sub-block table): use resid_pre or resid_post"
        )
    if point == "resid_mid" and parallel:
        raise SiteError(
            f"hook site 'resid_mid' does not exist on {model_name}: its blocks are "
            "parallel-residual (attention and MLP both read resid_pre); use resid_pre, "
            "attn_out, mlp_out or resid_post"
        )
