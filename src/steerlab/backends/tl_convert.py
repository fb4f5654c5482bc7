"""Building TransformerLens models from a Hugging Face model already in memory, offline.

- :func:`hooked_from_hf`: a ``HookedTransformer`` converted from the loaded model's own config
  and weights (TransformerLens's converters, no weight processing: no layer-norm folding, no
  centring), so its hook sites carry the model's own activations. TransformerLens's
  ``from_pretrained`` would read the architecture from the hub by name (a download, and for some
  families sizes fixed by name); here the config is written to a temporary directory and read
  back from there.
- :func:`official_name`: the name under which TransformerLens lists a model, aliases resolved.
- :func:`shared_copy`: a module-tree copy sharing every parameter and buffer (for the bridge,
  which rewires the model it wraps).
- :func:`tokenizer_for_tl`: a tokenizer copy TransformerLens keeps as it is.
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from typing import Any

import torch
from torch import nn

from steerlab.errors import SteerlabError


def tokenizer_for_tl(tokenizer: Any) -> Any:
    """A shallow copy of ``tokenizer`` that TransformerLens keeps as it is.

    ``TransformerBridge.boot_transformers`` and ``HookedTransformer(cfg, tokenizer=...)`` reload a
    tokenizer from its ``name_or_path`` with ``add_bos_token=True`` (a hub call for a hub id, an
    error for a tokenizer built in memory). TransformerLens detects from an encoding whether the
    tokenizer really prepends BOS, so marking the copy as BOS-adding only skips the reload. The
    copy shares the vocabulary; the caller's object keeps its own settings (padding side, ...).
    """
    tok = copy.copy(tokenizer)
    tok.init_kwargs = {
        **tokenizer.init_kwargs,
        "name_or_path": getattr(tokenizer, "name_or_path", ""),
        "add_bos_token": True,
    }
    return tok


def shared_copy(module: nn.Module) -> Any:
    """A copy of ``module``'s module tree (and config) whose parameters and buffers are the very
    tensors of ``module``: no weight memory is copied, and changing the copy's *structure* (as
    the bridge does) leaves ``module`` alone."""
    memo: dict[int, Any] = {id(t): t for t in (*module.parameters(), *module.buffers())}
    return copy.deepcopy(module, memo)


def official_name(label: str) -> str | None:
    """TransformerLens's official name for ``label`` (aliases resolved, e.g. ``gpt2-small`` ->
    ``gpt2``), or None when ``label`` is not on its list."""
    from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        return str(get_official_model_name(label))
    except ValueError:
        return None


def hooked_from_hf(hf_model: Any, tokenizer: Any, name: str | None = None) -> Any:
    """A ``HookedTransformer`` with ``hf_model``'s weights, built offline and unprocessed.

    What ``HookedTransformer.from_pretrained_no_processing(name, hf_model=hf_model)`` builds,
    except that the config comes from ``hf_model.config``: ``from_pretrained`` fetches the config
    from the hub by name (a download, and the hub model's sizes rather than the loaded one's).
    TransformerLens's own converters do the work: ``get_pretrained_model_config`` on a directory
    holding only the loaded config, ``get_pretrained_state_dict`` on ``hf_model``, and
    ``load_and_process_state_dict`` with every processing step off, so activations are the
    model's. Raises when TransformerLens cannot convert this architecture (or its config).
    """
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading

    param = next(hf_model.parameters())
    config = _config_for_tl(hf_model)
    with tempfile.TemporaryDirectory(prefix="steerlab-tl-") as tmp:
        config.save_pretrained(tmp)
        cfg = loading.get_pretrained_model_config(
            tmp,
            hf_cfg=hf_model.config.to_dict(),
            fold_ln=False,
            device=param.device,
            dtype=param.dtype,
        )
        state = loading.get_pretrained_state_dict(tmp, cfg, hf_model, dtype=param.dtype)
    text_cfg = hf_model.config.get_text_config()
    expected = (type(hf_model).__name__, _n_layers(text_cfg), text_cfg.vocab_size)
    got = (cfg.original_architecture, cfg.n_layers, cfg.d_vocab)
    if got != expected:  # e.g. a name-based branch of TransformerLens's config conversion
        raise SteerlabError(f"TransformerLens converted the config to {got}, not {expected}")
    if name is not None:
        cfg.model_name = name.split("/")[-1]
        cfg.tokenizer_name = name
    with warnings.catch_warnings(), torch.device(param.device):
        warnings.simplefilter("ignore", DeprecationWarning)  # deprecated in TransformerLens 3.9
        ht = HookedTransformer(cfg, tokenizer=tokenizer_for_tl(tokenizer), move_to_device=False)
    ht.load_and_process_state_dict(
        state,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    return ht.eval()


def _config_for_tl(hf_model: Any) -> Any:
    """A copy of ``hf_model``'s config as TransformerLens's config conversion reads it: with its
    architecture (a model built from a config has none) and the top-level fields that hub
    configs carry but ``transformers`` 5 no longer sets (GPT-2's ``n_ctx``)."""
    config = copy.deepcopy(hf_model.config)
    config.architectures = [type(hf_model).__name__]
    if getattr(config, "n_ctx", None) is None and getattr(config, "n_positions", None):
        config.n_ctx = config.n_positions
    return config


def _n_layers(text_cfg: Any) -> int:
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(text_cfg, key, None)
        if isinstance(value, int):
            return value
    return -1
