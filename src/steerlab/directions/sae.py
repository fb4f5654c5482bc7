"""A steering direction from one SAE feature: its decoder row, as stored."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from steerlab._util.version import __version__
from steerlab.errors import SteerlabError
from steerlab.sae.clamp import METHOD
from steerlab.sae.model import SparseAutoencoder
from steerlab.vectors import SteeringVector

if TYPE_CHECKING:
    from steerlab.models import Model


def sae(sae: SparseAutoencoder, feature: int, model: Model | None = None) -> SteeringVector:
    """The vector of SAE feature ``feature``: its raw decoder row ``W_dec[feature]`` (d_in,) at
    the SAE's layer and hook point.

    ``add`` with it at ``scale="diff"`` adds α times the decoder row (what α units of the
    feature's activation write, for SAEs that do not rescale by decoder norm); ``sae_clamp``
    with it (and ``sae=``) sets the feature's activation. ``raw_norm`` records the decoder norm;
    there is no ``mean_resid_norm`` (so no ``scale="resid"``). With ``model``, the SAE is checked
    to fit it and the vector is tagged with that model's name when the SAE records none.
    """
    i = sae.check_feature(feature)
    if model is not None:
        sae.check_model(model)
    row = sae.decoder_row(i).to("cpu", torch.float32)  # (d_in,)
    norm = float(row.norm())
    if norm == 0.0:
        raise SteerlabError(
            f"feature {i} of {sae.describe()} has a zero decoder row (a dead feature): it has "
            "no direction"
        )
    model_id = sae.model_name
    if model_id == "unknown" and model is not None:
        model_id = model.name
    return SteeringVector(
        directions={sae.layer: row},
        hook_point=sae.site.point,
        method=METHOD,
        model_id=model_id,
        raw_norm={sae.layer: norm},
        steerlab_version=__version__,
        extra={
            "sae": sae.source,
            "feature": i,
            "site": sae.hook_name,
            "decoder_norm": norm,
            "architecture": sae.architecture,
            "d_sae": sae.d_sae,
        },
    )
