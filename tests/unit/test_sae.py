"""SAE loading (sae-lens directories and releases, Gemma Scope), the SAE value, SAE directions and
``sae_clamp`` validation.

Parity with sae-lens: an SAE built and saved by sae-lens itself loads through steerlab (without
importing sae-lens) to the same tensors and the same activations as through sae-lens.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tests.conftest import _load_tiny

from steerlab import directions
from steerlab.errors import SteerlabError
from steerlab.interventions import Intervention
from steerlab.models import Model
from steerlab.sae import (
    SAEError,
    SparseAutoencoder,
    from_sae_lens,
    load_gemma_scope,
    load_sae,
    site_from_hook,
)
from steerlab.sites import Site
from steerlab.vectors import SteeringVector

D_IN, D_SAE = 8, 16
HOOK = "blocks.1.hook_resid_post"
GEMMA_DIR = ("gemma-scope-2b-pt-res", "layer_2", "width_16k", "average_l0_71")

# (architecture, extra sae-lens config)
ARCHS = [
    ("standard", {}),
    ("jumprelu", {}),
    ("topk", {"k": 3}),
    ("topk", {"k": 4, "rescale_acts_by_decoder_norm": True}),
]
ARCH_IDS = ["standard", "jumprelu", "topk", "topk-rescaled"]


def sae_lens_sae(arch: str, extra: dict[str, Any], apply_b_dec: bool = True, seed: int = 0) -> Any:
    """A sae-lens SAE of ``arch`` with random weights (thresholds positive)."""
    sl = pytest.importorskip("sae_lens")
    from sae_lens.saes.sae import SAEMetadata

    classes = {
        "standard": (sl.StandardSAE, sl.StandardSAEConfig),
        "jumprelu": (sl.JumpReLUSAE, sl.JumpReLUSAEConfig),
        "topk": (sl.TopKSAE, sl.TopKSAEConfig),
    }
    cls, cfg_cls = classes[arch]
    cfg = cfg_cls(
        d_in=D_IN,
        d_sae=D_SAE,
        apply_b_dec_to_input=apply_b_dec,
        metadata=SAEMetadata(hook_name=HOOK, model_name="tiny-llama"),
        **extra,
    )
    sae = cls(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        if arch == "jumprelu":
            sae.threshold.abs_()
    return sae


def steerlab_sae(
    arch: str = "standard",
    d_in: int = D_IN,
    d_sae: int = D_SAE,
    site: Site | None = None,
    seed: int = 0,
    **kwargs: Any,
) -> SparseAutoencoder:
    gen = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(d_sae, d_in, generator=gen)
    return SparseAutoencoder(
        W_enc=torch.randn(d_in, d_sae, generator=gen),
        b_enc=torch.randn(d_sae, generator=gen),
        W_dec=w_dec,
        b_dec=torch.randn(d_in, generator=gen),
        site=site or Site(1, "resid_post"),
        architecture=arch,
        threshold=torch.rand(d_sae, generator=gen) if arch == "jumprelu" else None,
        k=3 if arch == "topk" else None,
        source=f"test-{arch}",
        model_name="tiny-llama",
        **kwargs,
    )


def write_dir(path: Path, cfg: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    (path / "cfg.json").write_text(json.dumps(cfg))
    save_file(tensors, str(path / "sae_weights.safetensors"))
    return path


def std_cfg(**changes: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "architecture": "standard",
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "float32",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {"hook_name": HOOK, "model_name": "tiny-llama"},
    }
    cfg.update(changes)
    return cfg


def std_tensors() -> dict[str, torch.Tensor]:
    s = steerlab_sae()
    return {"W_enc": s.W_enc, "b_enc": s.b_enc, "W_dec": s.W_dec, "b_dec": s.b_dec}


# ----------------------------------------------------------------------------- sae-lens parity


@pytest.mark.parametrize("apply_b_dec", [True, False])
@pytest.mark.parametrize(("arch", "extra"), ARCHS, ids=ARCH_IDS)
def test_sae_lens_dir_loads_identically_both_ways(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arch: str, extra: dict, apply_b_dec: bool
) -> None:
    """Saved by sae-lens's own ``save_model``; steerlab reads it with sae-lens unimportable and
    gets the tensors and activations sae-lens's ``load_from_disk`` gets, bit for bit."""
    from sae_lens import SAE

    built = sae_lens_sae(arch, extra, apply_b_dec)
    built.save_model(tmp_path / "sae")
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "sae_lens", None)  # any import of sae_lens now fails
        ours = load_sae(tmp_path / "sae")
    theirs = SAE.load_from_disk(tmp_path / "sae")

    names = ["W_enc", "b_enc", "W_dec", "b_dec"] + (["threshold"] if arch == "jumprelu" else [])
    for name in names:
        assert torch.equal(getattr(ours, name), getattr(theirs, name)), name
    assert ours.architecture == arch
    assert ours.site == Site(1, "resid_post") and ours.hook_name == HOOK
    assert ours.model_name == "tiny-llama"
    assert ours.apply_b_dec_to_input is apply_b_dec
    assert ours.k == extra.get("k")
    assert ours.rescale_acts_by_decoder_norm is extra.get("rescale_acts_by_decoder_norm", False)

    x = torch.randn(3, 5, D_IN, generator=torch.Generator().manual_seed(1)) * 2  # (B, T, d)
    with torch.no_grad():
        acts = theirs.encode(x)
        recon = theirs.decode(acts)
    assert torch.equal(ours.encode(x), acts)
    assert torch.equal(ours.decode(acts), recon)
    assert (acts > 0).any() and (acts == 0).any()  # not vacuous: some features on, some off
    if arch == "topk":
        assert int((acts != 0).sum(-1).max()) <= extra["k"]
    i = int(acts.reshape(-1, D_SAE).ne(0).sum(0).argmax())
    assert torch.equal(ours.feature_acts(x, i), acts[..., i])
    # an in-memory sae-lens SAE converts to the same value
    converted = from_sae_lens(theirs, source="mem")
    for name in names:
        assert torch.equal(getattr(converted, name), getattr(ours, name)), name


def test_dtype_follows_the_config_or_the_caller(tmp_path: Path) -> None:
    write_dir(tmp_path / "s", std_cfg(dtype="bfloat16"), std_tensors())
    assert load_sae(tmp_path / "s").dtype == torch.bfloat16
    assert load_sae(tmp_path / "s", dtype="float32").dtype == torch.float32


def test_config_from_before_sae_lens_6(tmp_path: Path) -> None:
    """Old configs: ``hook_point`` at the top level, ``activation_fn="topk"`` with kwargs."""
    cfg = {
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "float32",
        "hook_point": "blocks.2.hook_resid_pre",
        "model_name": "gpt2",
        "activation_fn": "topk",
        "activation_fn_kwargs": {"k": 5},
        "normalize_activations": False,
    }
    sae = load_sae(write_dir(tmp_path / "old", cfg, std_tensors()))
    assert sae.architecture == "topk" and sae.k == 5
    assert sae.site == Site(2, "resid_pre") and sae.model_name == "gpt2"
    assert sae.apply_b_dec_to_input


def test_jumprelu_log_threshold_is_read(tmp_path: Path) -> None:
    t = std_tensors()
    t["log_threshold"] = torch.full((D_SAE,), -1.0)
    sae = load_sae(write_dir(tmp_path / "j", std_cfg(architecture="jumprelu"), t))
    assert sae.threshold is not None
    assert torch.allclose(sae.threshold, torch.full((D_SAE,), float(np.exp(-1.0))))


def test_all_ones_scaling_factor_is_dropped(tmp_path: Path) -> None:
    t = {**std_tensors(), "scaling_factor": torch.ones(D_SAE)}
    assert load_sae(write_dir(tmp_path / "ok", std_cfg(), t)).d_sae == D_SAE
    t["scaling_factor"] = torch.full((D_SAE,), 2.0)
    with pytest.raises(SAEError, match="scaling_factor that is not all ones"):
        load_sae(write_dir(tmp_path / "bad", std_cfg(), t))


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"architecture": "gated"}, "architecture 'gated' is not supported"),
        ({"normalize_activations": "layer_norm"}, "normalizes its inputs"),
        ({"reshape_activations": "hook_z"}, "per-head"),
        ({"metadata": {"hook_name": "blocks.1.attn.hook_z"}}, "not a steerlab site"),
        ({"metadata": {"hook_name": "hook_embed"}}, "not a steerlab site"),
        ({"metadata": {"hook_name": HOOK, "hook_head_index": 3}}, "single attention head"),
        ({"metadata": {}}, "does not say which site"),
        ({"d_in": D_IN + 1}, "cfg.json says d_in=9"),
        ({"architecture": "jumprelu"}, r"missing \['threshold'\]"),
        ({"activation_fn": "tanh"}, "activation function 'tanh'"),
        ({"dtype": "int8"}, "unknown SAE dtype"),
    ],
)
def test_bad_sae_lens_dirs_fail_in_one_sentence(tmp_path: Path, changes: dict, match: str) -> None:
    path = write_dir(tmp_path / "s", std_cfg(**changes), std_tensors())
    with pytest.raises(SAEError, match=match) as info:
        load_sae(path)
    assert "\n" not in str(info.value)


def test_missing_paths_are_clear(tmp_path: Path) -> None:
    with pytest.raises(SAEError, match="no such SAE directory or file"):
        load_sae(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SAEError, match="neither a sae-lens SAE directory"):
        load_sae(tmp_path / "empty")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "cfg.json").write_text("{}")
    with pytest.raises(SAEError, match=r"needs cfg\.json and sae_weights\.safetensors"):
        load_sae(tmp_path / "half")
    with pytest.raises(SAEError, match="no such Gemma Scope"):
        load_sae(tmp_path / "params.npz")


def test_hook_from_the_caller(tmp_path: Path) -> None:
    path = write_dir(tmp_path / "s", std_cfg(metadata={}), std_tensors())
    assert load_sae(path, hook="blocks.3.hook_mlp_out").site == Site(3, "mlp_out")
    recorded = write_dir(tmp_path / "r", std_cfg(), std_tensors())
    assert load_sae(recorded, hook=HOOK).site == Site(1, "resid_post")
    assert load_sae(recorded, hook="resid_post").site == Site(1, "resid_post")
    with pytest.raises(SAEError, match=r"reads blocks\.1\.hook_resid_post, but hook="):
        load_sae(recorded, hook="blocks.2.hook_resid_post")
    with pytest.raises(SAEError, match="trained on 'tiny-llama'"):
        load_sae(recorded, model_name="gpt2")


@pytest.mark.parametrize(
    ("name", "layer", "site"),
    [
        ("blocks.12.hook_resid_post", None, Site(12, "resid_post")),
        ("blocks.0.hook_resid_pre", None, Site(0, "resid_pre")),
        ("blocks.3.hook_mlp_out", None, Site(3, "mlp_out")),
        ("hook_attn_out", 4, Site(4, "attn_out")),
        ("resid_mid", 2, Site(2, "resid_mid")),
        ("model.layers.7", None, Site(7, "resid_post")),
    ],
)
def test_hook_names_map_to_sites(name: str, layer: int | None, site: Site) -> None:
    assert site_from_hook(name, layer) == site


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("blocks.3.attn.hook_z", "not a steerlab site"),
        ("blocks.3.hook_mlp_in", "not a steerlab site"),
        ("hook_embed", "not a steerlab site"),
        ("resid_post", "needs a layer"),
    ],
)
def test_unknown_hook_names_fail(name: str, match: str) -> None:
    with pytest.raises(SAEError, match=match):
        site_from_hook(name)


# ----------------------------------------------------------------------------- Gemma Scope


def gemma_npz(root: Path, parts: tuple[str, ...] = GEMMA_DIR, upper: bool = True) -> Path:
    """A tiny params.npz laid out like Gemma Scope's (keys W_enc, W_dec, b_enc, b_dec,
    threshold; ``upper=False`` writes the older lowercase ``w_enc``/``w_dec``)."""
    gen = torch.Generator().manual_seed(3)
    arrays = {
        "W_enc" if upper else "w_enc": torch.randn(D_IN, D_SAE, generator=gen).numpy(),
        "W_dec" if upper else "w_dec": torch.randn(D_SAE, D_IN, generator=gen).numpy(),
        "b_enc": torch.randn(D_SAE, generator=gen).numpy(),
        "b_dec": torch.randn(D_IN, generator=gen).numpy(),
        "threshold": torch.rand(D_SAE, generator=gen).numpy(),
    }
    folder = root.joinpath(*parts)
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **arrays)
    return folder / "params.npz"


def test_gemma_scope_params_from_the_path(tmp_path: Path) -> None:
    file = gemma_npz(tmp_path)
    sae = load_sae(file)
    assert sae.architecture == "jumprelu" and not sae.apply_b_dec_to_input
    assert sae.site == Site(2, "resid_post")
    assert sae.model_name == "gemma-2-2b"
    assert (sae.metadata["width"], sae.metadata["l0"]) == ("16k", "71")
    assert (sae.d_in, sae.d_sae) == (D_IN, D_SAE)
    with np.load(file) as data:
        assert torch.equal(sae.W_enc, torch.from_numpy(data["W_enc"]))
        assert torch.equal(sae.threshold, torch.from_numpy(data["threshold"]))
    # the directory works too, and so does the older lowercase key spelling
    assert torch.equal(load_sae(file.parent).W_dec, sae.W_dec)
    lower = gemma_npz(tmp_path / "lower", upper=False)
    assert torch.equal(load_sae(lower).W_enc, sae.W_enc)


def test_gemma_scope_matches_sae_lens_reading_of_params(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sae-lens's own Gemma Scope loader, fed the same file, gives the same SAE."""
    pytest.importorskip("sae_lens")
    import sae_lens.loading.pretrained_sae_loaders as loaders
    from sae_lens import SAE

    file = gemma_npz(tmp_path)
    monkeypatch.setattr(loaders, "hf_hub_download", lambda **_: str(file))
    cfg, state, _ = loaders.gemma_2_sae_huggingface_loader(
        "google/gemma-scope-2b-pt-res",
        "layer_2/width_16k/average_l0_71",
        cfg_overrides={"d_in": D_IN, "d_sae": D_SAE},
    )
    theirs = SAE.from_dict(loaders.handle_config_defaulting(cfg))
    theirs.load_state_dict(state)
    ours = load_gemma_scope(file)
    assert ours.hook_name == theirs.cfg.metadata.hook_name
    assert ours.model_name == theirs.cfg.metadata.model_name
    assert ours.apply_b_dec_to_input == theirs.cfg.apply_b_dec_to_input
    x = torch.randn(4, D_IN, generator=torch.Generator().manual_seed(2)) * 3
    with torch.no_grad():
        acts = theirs.encode(x)
    assert torch.equal(ours.encode(x), acts)
    assert (acts > 0).any() and (acts == 0).any()


def test_gemma_scope_site_from_the_caller(tmp_path: Path) -> None:
    bare = gemma_npz(tmp_path / "a", parts=("downloads", "x"))
    with pytest.raises(SAEError, match="does not say which site"):
        load_sae(bare)
    sae = load_sae(bare, hook="blocks.5.hook_mlp_out", model_name="gemma-2-9b")
    assert sae.site == Site(5, "mlp_out") and sae.model_name == "gemma-2-9b"
    # a layer from the path completes a short hook; a different layer is refused
    layered = gemma_npz(tmp_path / "b", parts=("layer_4", "width_16k"))
    assert load_sae(layered, hook="resid_post").site == Site(4, "resid_post")
    with pytest.raises(SAEError, match="under layer_4"):
        load_sae(layered, hook="blocks.3.hook_resid_post")
    full = gemma_npz(tmp_path / "c")
    with pytest.raises(SAEError, match=r"reads blocks\.2\.hook_resid_post, but hook="):
        load_sae(full, hook="blocks.2.hook_mlp_out")


@pytest.mark.parametrize(
    ("parts", "match"),
    [
        (("gemma-scope-2b-pt-att", "layer_3", "width_16k"), "'att'"),
        (("gemma-scope-2b-pt-res", "embedding", "width_4k"), "embeddings"),
    ],
)
def test_gemma_scope_sites_we_cannot_steer(tmp_path: Path, parts: tuple, match: str) -> None:
    with pytest.raises(SAEError, match=match):
        load_sae(gemma_npz(tmp_path, parts=parts))


# ----------------------------------------------------------------------------- releases


def test_release_offline_fails_at_once_in_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("sae_lens")
    import steerlab.sae.load

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(steerlab.sae.load, "hub_offline", lambda: False)
    monkeypatch.setattr(steerlab.sae.load, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(SAEError, match="unreachable") as info:
        load_sae("gemma-scope-2b-pt-res-canonical", "layer_20/width_16k/canonical")
    msg = str(info.value)
    assert "\n" not in msg and "gemma-scope-2b-pt-res-canonical" in msg


def test_release_without_sae_lens_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sae_lens", None)
    with pytest.raises(SAEError, match=r"pip install 'steerlab\[sae\]'"):
        load_sae("some-release", "some-id")


def test_unknown_release_is_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("sae_lens")
    import steerlab.sae.load

    monkeypatch.setattr(steerlab.sae.load, "hub_reachable", lambda timeout=3.0: True)
    with pytest.raises(SAEError, match="could not load the SAE 'x' of release 'no-such'") as info:
        load_sae("no-such", "x")
    assert "\n" not in str(info.value)


def test_release_goes_through_sae_lens_from_pretrained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The release route, with sae-lens's download swapped for a local Gemma Scope file: the
    release's site, model and weights arrive as sae-lens read them."""
    pytest.importorskip("sae_lens")
    import sae_lens.loading.pretrained_sae_loaders as loaders

    import steerlab.sae.load

    file = gemma_npz(tmp_path, parts=("layer_20", "width_16k", "average_l0_71"))
    real = loaders.gemma_2_sae_huggingface_loader

    def offline_loader(repo_id: str, folder_name: str, **kw: Any) -> Any:
        kw["cfg_overrides"] = {**(kw.get("cfg_overrides") or {}), "d_in": D_IN, "d_sae": D_SAE}
        return real(repo_id, folder_name, **kw)

    monkeypatch.setattr(steerlab.sae.load, "hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(loaders, "hf_hub_download", lambda **_: str(file))
    monkeypatch.setitem(loaders.NAMED_PRETRAINED_SAE_LOADERS, "gemma_2", offline_loader)
    sae = load_sae("gemma-scope-2b-pt-res", "layer_20/width_16k/average_l0_71")
    assert sae.source == "gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71"
    assert sae.site == Site(20, "resid_post") and sae.architecture == "jumprelu"
    assert sae.model_name == "gemma-2-2b"
    assert torch.equal(sae.W_enc, load_gemma_scope(file, hook="resid_post").W_enc)
    with pytest.raises(SAEError, match="but hook="):
        load_sae("gemma-scope-2b-pt-res", "layer_20/width_16k/average_l0_71", hook="mlp_out")


# ----------------------------------------------------------------------------- the SAE and a model


def test_check_model(tiny_llama: Model) -> None:
    d = tiny_llama.d_model
    steerlab_sae(d_in=d, site=Site(3, "resid_pre")).check_model(tiny_llama)
    with pytest.raises(SAEError, match=f"width d_in={d + 1}.*d_model {d}"):
        steerlab_sae(d_in=d + 1).check_model(tiny_llama)
    with pytest.raises(SAEError, match=r"reads layer 7, but tiny-llama has 4 layers \(valid: 0"):
        steerlab_sae(d_in=d, site=Site(7, "resid_post")).check_model(tiny_llama)
    neox = _load_tiny("tiny-neox")
    with pytest.raises(SAEError, match="resid_mid"):
        steerlab_sae(d_in=d, site=Site(1, "resid_mid")).check_model(neox)


def test_load_with_model_checks_it(tmp_path: Path, tiny_llama: Model) -> None:
    path = write_dir(tmp_path / "s", std_cfg(), std_tensors())
    with pytest.raises(SAEError, match="d_model"):
        load_sae(path, model=tiny_llama)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"architecture": "gated"}, "not supported"),
        ({"architecture": "jumprelu", "threshold": None}, "needs a threshold"),
        ({"threshold": torch.zeros(D_SAE)}, "only jumprelu"),
        ({"architecture": "topk", "k": D_SAE + 1}, "k in 1..16"),
        ({"architecture": "topk", "k": 0}, "k in 1..16"),
        ({"k": 2}, "only topk"),
        ({"rescale_acts_by_decoder_norm": True}, "topk option"),
        ({"b_dec": torch.zeros(D_IN + 1)}, "b_dec has shape"),
        ({"W_dec": torch.zeros(D_IN, D_SAE)}, "W_dec has shape"),
        ({"b_enc": torch.zeros(D_SAE, dtype=torch.float64)}, "one dtype"),
    ],
)
def test_sae_value_validates(kwargs: dict, match: str) -> None:
    base = steerlab_sae()
    fields = {
        "W_enc": base.W_enc,
        "b_enc": base.b_enc,
        "W_dec": base.W_dec,
        "b_dec": base.b_dec,
        "site": base.site,
        **kwargs,
    }
    with pytest.raises(SAEError, match=match):
        SparseAutoencoder(**fields)


def test_to_casts_every_weight() -> None:
    sae = steerlab_sae("jumprelu").to(dtype=torch.float64)
    assert sae.dtype == torch.float64
    assert sae.threshold is not None and sae.threshold.dtype == torch.float64


# ----------------------------------------------------------------------------- directions.sae


def test_direction_is_the_raw_decoder_row() -> None:
    sae = steerlab_sae("topk", site=Site(2, "mlp_out"))
    v = directions.sae(sae, 5)
    assert isinstance(v, SteeringVector)
    assert v.layers == (2,) and v.hook_point == "mlp_out"
    assert torch.equal(v.direction(2), sae.W_dec[5])
    assert v.method == "sae" and v.model_id == "tiny-llama"
    norm = float(sae.W_dec[5].norm())
    assert v.raw_norm[2] == pytest.approx(norm)
    assert dict(v.mean_resid_norm) == {}
    assert v.extra["feature"] == 5 and v.extra["sae"] == "test-topk"
    assert v.extra["site"] == "blocks.2.hook_mlp_out" and v.extra["architecture"] == "topk"
    assert v.extra["decoder_norm"] == pytest.approx(norm)
    # add at scale "diff" with α adds exactly α times the decoder row
    iv = Intervention(v, layer=2, alpha=3.0, scale="diff")
    assert torch.allclose(iv.alpha * iv.scale_factor() * v.unit(2), 3.0 * sae.W_dec[5], atol=1e-6)


def test_direction_survives_save_and_load(tmp_path: Path) -> None:
    v = directions.sae(steerlab_sae(), 2)
    back = SteeringVector.load(v.save(tmp_path / "v.safetensors"))
    assert torch.equal(back.direction(1), v.direction(1))
    assert back.extra["feature"] == 2 and back.method == "sae"


def test_direction_errors(tiny_llama: Model) -> None:
    sae = steerlab_sae()
    with pytest.raises(SAEError, match="feature 16 is out of range"):
        directions.sae(sae, D_SAE)
    with pytest.raises(SAEError, match="int index"):
        directions.sae(sae, True)  # type: ignore[arg-type]
    dead = SparseAutoencoder(
        W_enc=sae.W_enc,
        b_enc=sae.b_enc,
        W_dec=torch.cat([torch.zeros(1, D_IN), sae.W_dec[1:]]),
        b_dec=sae.b_dec,
        site=sae.site,
    )
    with pytest.raises(SteerlabError, match="zero decoder row"):
        directions.sae(dead, 0)
    with pytest.raises(SAEError, match="d_model"):
        directions.sae(sae, 0, model=tiny_llama)


# ----------------------------------------------------------------------------- sae_clamp specs


def test_sae_clamp_spec() -> None:
    sae = steerlab_sae("jumprelu")
    v = directions.sae(sae, 4)
    iv = Intervention(v, 1, "sae_clamp", alpha=2.5, positions="generated", sae=sae)
    assert iv.site == sae.site and iv.scale == "absolute"
    assert iv.describe() == (
        "sae_clamp@blocks.1.hook_resid_post feature=4 target=2.5 positions=generated"
    )


def test_sae_clamp_validation() -> None:
    sae = steerlab_sae()
    v = directions.sae(sae, 4)
    other = steerlab_sae(seed=9)
    random = SteeringVector({1: torch.randn(D_IN)})
    cases: list[tuple[dict[str, Any], str]] = [
        ({}, "needs sae="),
        ({"sae": sae, "scale": "diff"}, "scale='absolute'"),
        ({"sae": sae, "scale": "resid"}, "scale='absolute'"),
        ({"sae": sae, "vector": random}, "from steerlab.directions.sae"),
        ({"sae": sae, "vector": 2 * v}, "not feature 4's decoder row"),
        ({"sae": other}, "not feature 4's decoder row"),
        ({"sae": sae, "hook_point": "resid_pre"}, "can only be clamped where its SAE reads"),
        ({"sae": sae, "layer": 0, "source_layer": 1}, "can only be clamped where its SAE reads"),
        ({"sae": sae, "alpha": float("nan")}, "finite"),
    ]
    for kwargs, match in cases:
        args = {"vector": v, "layer": 1, "kind": "sae_clamp", **kwargs}
        with pytest.raises(SteerlabError, match=match):
            Intervention(**args)
    with pytest.raises(SteerlabError, match="only used by kind 'sae_clamp'"):
        Intervention(v, 1, "add", sae=sae)
    small = steerlab_sae(d_sae=4)
    forged = SteeringVector({1: torch.randn(D_IN)}, method="sae", extra={"feature": 9})
    with pytest.raises(SAEError, match="feature 9 is out of range"):
        Intervention(forged, 1, "sae_clamp", sae=small)
