"""Loading SAEs: sae-lens directories, Gemma Scope ``params.npz``, sae-lens releases.

- a directory in sae-lens format (``cfg.json`` + ``sae_weights.safetensors``, as sae-lens's
  ``save_model`` and steerlab's trainer write it) is read here directly, without importing
  sae-lens, and gives the same tensors and activations as ``sae_lens.SAE.load_from_disk``;
- a Gemma Scope ``params.npz`` (``W_enc``, ``W_dec``, ``b_enc``, ``b_dec``, ``threshold``;
  JumpReLU, no decoder bias subtracted from the input) is read directly; its site and model come
  from the path (``gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71/params.npz``) or from
  the caller;
- a release and SAE id (``load_sae("gemma-scope-2b-pt-res-canonical",
  "layer_20/width_16k/canonical")``) go through ``sae_lens.SAE.from_pretrained`` (the ``sae``
  extra) and need the Hugging Face hub or its local cache.

Every route gives a :class:`~steerlab.sae.model.SparseAutoencoder` whose hook name is a steerlab
site; pass ``model=`` to check it fits that model (width, layer, site) in one clear error.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from steerlab._util.hub import hub_offline, hub_reachable
from steerlab.sae.model import ModelLike, SAEError, SparseAutoencoder, site_from_hook
from steerlab.sites import Site

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
GEMMA_SCOPE_FILENAME = "params.npz"

_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
_NO_NORMALIZATION = (None, False, "none")
_GEMMA_REPO = re.compile(r"gemma-scope-(\d+b)-(pt|it)-(res|mlp|att|transcoders)")
_GEMMA_POINT = {"res": "resid_post", "mlp": "mlp_out"}


def _dtype(value: str | torch.dtype | None, default: str = "float32") -> torch.dtype:
    if isinstance(value, torch.dtype):
        return value
    name = (value or default).removeprefix("torch.")
    if name not in _DTYPES:
        raise SAEError(f"unknown SAE dtype {value!r}: use one of {', '.join(_DTYPES)}")
    return _DTYPES[name]


def _pick_site(recorded: str | None, given: str | None, layer: int | None, what: str) -> Site:
    """The site from the SAE's own record and/or the caller's ``hook``; they must agree.

    ``layer`` completes a short point name (``resid_post``) in either.
    """
    if recorded is None and given is None:
        raise SAEError(
            f"{what} does not say which site it reads: pass hook='blocks.L.hook_resid_post' "
            "(or another blocks.L.hook_POINT)"
        )
    mine = None if recorded is None else site_from_hook(recorded, layer, what)
    theirs = None
    if given is not None:
        theirs = site_from_hook(given, layer if mine is None else mine.layer, what)
    if mine is not None and theirs is not None and mine != theirs:
        raise SAEError(f"{what} reads {mine.name}, but hook={given!r} was given")
    site = mine or theirs
    assert site is not None
    return site


def _pick_model(recorded: str | None, given: str | None, what: str) -> str:
    if recorded and given and recorded != given:
        raise SAEError(f"{what} was trained on {recorded!r}, but model_name={given!r} was given")
    return recorded or given or "unknown"


def _drop_unit_scaling(state: dict[str, torch.Tensor], what: str) -> None:
    """Old sae-lens files may carry an all-ones scaling factor; anything else changes the
    decoder and is refused (fold it into the weights first)."""
    for key in ("scaling_factor", "finetuning_scaling_factor"):
        if key in state:
            if not torch.all(state[key] == 1):
                raise SAEError(f"{what} has a {key} that is not all ones; fold it into W_dec first")
            del state[key]


def _check_keys(state: dict[str, torch.Tensor], arch: str, what: str) -> None:
    want = {"W_enc", "b_enc", "W_dec", "b_dec"} | ({"threshold"} if arch == "jumprelu" else set())
    missing, extra = sorted(want - set(state)), sorted(set(state) - want)
    if missing or extra:
        raise SAEError(
            f"{what}: a {arch} SAE needs tensors {sorted(want)}; missing {missing}, "
            f"unexpected {extra}"
        )


# ----------------------------------------------------------------------------- sae-lens directory


def load_sae_lens_dir(
    path: str | Path,
    *,
    hook: str | None = None,
    model_name: str | None = None,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
) -> SparseAutoencoder:
    """Read an SAE saved in sae-lens format (``cfg.json`` + ``sae_weights.safetensors``).

    ``dtype`` defaults to the one in ``cfg.json`` (as sae-lens does). Configs from before
    sae-lens 6 (``hook_point``, ``activation_fn="topk"``) are understood too.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    what = f"SAE {path}"
    cfg_path, weights_path = path / CFG_FILENAME, path / WEIGHTS_FILENAME
    if not cfg_path.is_file() or not weights_path.is_file():
        raise SAEError(
            f"{path} is not an SAE in sae-lens format: it needs {CFG_FILENAME} and "
            f"{WEIGHTS_FILENAME}"
        )
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        if not isinstance(cfg, dict):
            raise TypeError(f"expected a JSON object, got {type(cfg).__name__}")
    except (OSError, ValueError, TypeError) as e:
        raise SAEError(f"{cfg_path}: unreadable sae-lens config ({e})") from e
    meta = cfg.get("metadata") or {}
    fn = cfg.get("activation_fn", cfg.get("activation_fn_str"))
    arch = cfg.get("architecture") or ("topk" if fn == "topk" else "standard")
    if fn not in (None, "relu", "topk"):
        raise SAEError(f"{what}: activation function {fn!r} is not supported (relu, topk)")
    norm = cfg.get("normalize_activations", "none")
    if norm not in _NO_NORMALIZATION:
        raise SAEError(
            f"{what} normalizes its inputs ({norm!r}); steerlab reads SAEs whose input is the raw "
            "activation: fold the normalization into the weights first"
        )
    if cfg.get("reshape_activations", "none") != "none":
        raise SAEError(f"{what} reads per-head activations (hook_z); steerlab steers sites only")
    if meta.get("hook_head_index", cfg.get("hook_head_index")) is not None:
        raise SAEError(f"{what} reads a single attention head; steerlab steers whole sites")
    recorded = (
        meta.get("hook_name")
        or cfg.get("hook_name")
        or cfg.get("hook_point")
        or meta.get("hf_hook_name")
    )
    site = _pick_site(recorded, hook, None, what)
    try:
        state = load_file(str(weights_path), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise SAEError(f"{weights_path}: not a readable safetensors file ({e})") from e
    dt = _dtype(dtype, cfg.get("dtype") or "float32")
    state = {k: v.to(dtype=dt) for k, v in state.items()}
    _drop_unit_scaling(state, what)
    if arch == "jumprelu" and "log_threshold" in state and "threshold" not in state:
        state["threshold"] = torch.exp(state.pop("log_threshold")).contiguous()
    _check_keys(state, arch, what)
    for key, dim in (("d_in", 0), ("d_sae", 1)):
        if key in cfg and int(cfg[key]) != state["W_enc"].shape[dim]:
            raise SAEError(
                f"{what}: cfg.json says {key}={cfg[key]}, but W_enc has shape "
                f"{tuple(state['W_enc'].shape)}"
            )
    k = cfg.get("k") if arch == "topk" else None
    if arch == "topk" and k is None:
        k = (cfg.get("activation_fn_kwargs") or {}).get("k")
    return SparseAutoencoder(
        W_enc=state["W_enc"],
        b_enc=state["b_enc"],
        W_dec=state["W_dec"],
        b_dec=state["b_dec"],
        site=site,
        architecture=arch,
        threshold=state.get("threshold"),
        k=k,
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
        rescale_acts_by_decoder_norm=bool(cfg.get("rescale_acts_by_decoder_norm", False)),
        source=str(path),
        model_name=_pick_model(meta.get("model_name") or cfg.get("model_name"), model_name, what),
        metadata={"format": "sae-lens", "hook_name": recorded or site.name, **meta},
    )


# ----------------------------------------------------------------------------- Gemma Scope


def load_gemma_scope(
    path: str | Path,
    *,
    hook: str | None = None,
    model_name: str | None = None,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
) -> SparseAutoencoder:
    """Read a Gemma Scope ``params.npz`` (a file, or the directory holding it).

    The site comes from ``hook`` or from the path: ``layer_<L>`` and a ``gemma-scope-*-res``
    (``resid_post``) or ``-mlp`` (``mlp_out``) component; the model name from ``model_name`` or
    the ``gemma-scope-<size>-<pt|it>`` component. Width and L0 are read from the path when present.
    """
    import numpy as np

    given = Path(path)
    file = given / GEMMA_SCOPE_FILENAME if given.is_dir() else given
    what = f"SAE {file}"
    if not file.is_file():
        raise SAEError(f"{file}: no such Gemma Scope params.npz")
    # the path as given, not resolved: the Hugging Face cache links files to content hashes
    parts = file.absolute().parts
    layer = next((int(m[1]) for p in parts if (m := re.fullmatch(r"layer_(\d+)", p))), None)
    repo = next((m for p in parts if (m := _GEMMA_REPO.search(p))), None)
    if any(p == "embedding" for p in parts):
        raise SAEError(f"{what} reads the embeddings (hook_embed), which is not a steerlab site")
    recorded = None
    if repo is not None and layer is not None:
        kind = repo[3]
        if kind not in _GEMMA_POINT:
            raise SAEError(
                f"{what} is a Gemma Scope {kind!r} SAE; steerlab reads the res and mlp ones "
                "(resid_post, mlp_out)"
            )
        recorded = f"blocks.{layer}.hook_{_GEMMA_POINT[kind]}"
    site = _pick_site(recorded, hook, layer, what)
    if layer is not None and site.layer != layer:
        raise SAEError(f"{what} is under layer_{layer}, but hook={hook!r} names layer {site.layer}")
    from_path = None
    if repo is not None:
        from_path = f"gemma-2-{repo[1]}" + ("-it" if repo[2] == "it" else "")
    try:
        with np.load(file) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as e:
        raise SAEError(f"{file}: not a readable .npz file ({e})") from e
    dt = _dtype(dtype)
    state = {
        ("W_" + k[2:] if k.startswith("w_") else k): torch.from_numpy(v).to(device, torch.float32)
        for k, v in arrays.items()
    }
    state = {k: v.to(dt) for k, v in state.items()}
    _drop_unit_scaling(state, what)
    _check_keys(state, "jumprelu", what)
    width = next((p[6:] for p in parts if p.startswith("width_")), None)
    l0 = next((p[11:] for p in parts if p.startswith("average_l0_")), None)
    return SparseAutoencoder(
        W_enc=state["W_enc"],
        b_enc=state["b_enc"],
        W_dec=state["W_dec"],
        b_dec=state["b_dec"],
        site=site,
        architecture="jumprelu",
        threshold=state["threshold"],
        apply_b_dec_to_input=False,
        source=str(given),
        model_name=_pick_model(from_path, model_name, what),
        metadata={"format": "gemma-scope", "hook_name": site.name, "width": width, "l0": l0},
    )


# ----------------------------------------------------------------------------- sae-lens objects


def from_sae_lens(sae: Any, source: str = "") -> SparseAutoencoder:
    """Copy an in-memory ``sae_lens.SAE`` (standard, jumprelu or topk) into a steerlab SAE."""
    cfg = sae.cfg
    arch = cfg.architecture()
    meta = cfg.metadata.to_dict() if cfg.metadata is not None else {}
    what = f"SAE {source}" if source else "the sae-lens SAE"
    if getattr(cfg, "normalize_activations", "none") not in _NO_NORMALIZATION:
        raise SAEError(
            f"{what} normalizes its inputs ({cfg.normalize_activations!r}); fold the "
            "normalization into the weights first"
        )
    if getattr(cfg, "reshape_activations", "none") != "none":
        raise SAEError(f"{what} reads per-head activations (hook_z); steerlab steers sites only")
    if meta.get("hook_head_index") is not None:
        raise SAEError(f"{what} reads a single attention head; steerlab steers whole sites")
    recorded = meta.get("hook_name") or meta.get("hf_hook_name")
    site = _pick_site(recorded, None, None, what)

    def copy(name: str) -> torch.Tensor:
        return getattr(sae, name).detach().clone()

    topk = arch == "topk"
    return SparseAutoencoder(
        W_enc=copy("W_enc"),
        b_enc=copy("b_enc"),
        W_dec=copy("W_dec"),
        b_dec=copy("b_dec"),
        site=site,
        architecture=arch,
        threshold=copy("threshold") if arch == "jumprelu" else None,
        k=int(cfg.k) if topk else None,
        apply_b_dec_to_input=bool(cfg.apply_b_dec_to_input),
        rescale_acts_by_decoder_norm=bool(getattr(cfg, "rescale_acts_by_decoder_norm", False))
        if topk
        else False,
        source=source,
        model_name=meta.get("model_name") or "unknown",
        metadata={"format": "sae-lens", "hook_name": recorded, **meta},
    )


def from_pretrained(
    release: str,
    sae_id: str,
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
) -> SparseAutoencoder:
    """Load a published SAE through ``sae_lens.SAE.from_pretrained(release, sae_id)``.

    Needs the ``sae`` extra and the Hugging Face hub (or, with ``HF_HUB_OFFLINE=1``, its local
    cache); offline it fails at once in one sentence instead of retrying.
    """
    source = f"{release}/{sae_id}"
    try:
        from sae_lens import SAE
    except ImportError as e:
        raise SAEError(
            f"loading the SAE release {release!r} needs sae-lens: pip install 'steerlab[sae]' "
            "(a local sae-lens directory or Gemma Scope params.npz loads without it)"
        ) from e
    if not hub_offline() and not hub_reachable():
        raise SAEError(
            f"cannot load the SAE {sae_id!r} of release {release!r}: the Hugging Face hub is "
            "unreachable (offline?); load a local sae-lens directory or params.npz instead"
        )
    dt = _dtype(dtype)
    dtype_name = next(k for k, v in _DTYPES.items() if v == dt)
    try:
        obj = SAE.from_pretrained(release, sae_id, device=str(device), dtype=dtype_name)
    except Exception as e:  # sae-lens raises ValueError, OSError, hub and HTTP errors
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SAEError(f"could not load the SAE {sae_id!r} of release {release!r}: {reason}") from e
    return from_sae_lens(obj, source=source)


# ----------------------------------------------------------------------------- one entry point


def load_sae(
    source: str | Path,
    sae_id: str | None = None,
    *,
    hook: str | None = None,
    model: ModelLike | None = None,
    model_name: str | None = None,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
) -> SparseAutoencoder:
    """Load an SAE from a release and id, a sae-lens directory, or a Gemma Scope params.npz.

    ``load_sae(release, sae_id)`` goes through sae-lens; ``load_sae(path)`` reads a directory with
    ``cfg.json`` or a ``params.npz`` (file or directory) itself. ``hook`` supplies the site when
    the source does not record it (a recorded one must agree). With ``model``, the SAE is checked
    to fit it (width, layer, site).
    """
    if sae_id is not None:
        sae = from_pretrained(str(source), sae_id, device=device, dtype=dtype)
        if hook is not None:
            _pick_site(sae.hook_name, hook, None, f"SAE {sae.source}")
    else:
        path = Path(source)
        kwargs: dict[str, Any] = {
            "hook": hook,
            "model_name": model_name,
            "device": device,
            "dtype": dtype,
        }
        if (path / CFG_FILENAME).is_file():
            sae = load_sae_lens_dir(path, **kwargs)
        elif path.suffix == ".npz" or (path / GEMMA_SCOPE_FILENAME).is_file():
            sae = load_gemma_scope(path, **kwargs)
        elif path.exists():
            raise SAEError(
                f"{path} is neither a sae-lens SAE directory ({CFG_FILENAME} + "
                f"{WEIGHTS_FILENAME}) nor a Gemma Scope {GEMMA_SCOPE_FILENAME}"
            )
        else:
            raise SAEError(
                f"{source}: no such SAE directory or file (for a published release, give its id "
                "too: load_sae(release, sae_id))"
            )
    if model is not None:
        sae.check_model(model)
    return sae
