"""One table, one row per Hugging Face architecture: everything a backend needs to know about it.

A row (keyed by ``config.model_type``, read from the text config) says where a decoder layer's
sub-block outputs live (the ``attn_out`` / ``mlp_out`` / ``resid_mid`` sites), whether its blocks
are parallel-residual, where the decoder-layer list is, and whether a forward pass can start in
the middle of that list. ``resid_pre`` / ``resid_post`` need no row: an architecture missing from
the table still loads (its layers are found by :data:`FALLBACK_LAYER_PATHS`, then by a search)
and steers at those two sites.

Adding an architecture is adding a row here (and a tiny config in the tests that exercises it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Architecture:
    """How one Hugging Face decoder architecture is laid out.

    ``attn``/``mlp``: attribute names (inside a decoder layer) of the modules whose output is
    exactly what the attention / MLP sub-block adds to the residual stream (after any post-norm).
    ``layers``: dotted attribute path of the decoder-layer ``nn.ModuleList`` on the model.
    ``parallel``: True/False, or the name of a config attribute that says so.
    ``ln1``: the layer's first norm, whose input is the block input after every edit at
    ``resid_pre`` (``resid_mid`` is formed from it).
    ``midstack``: the model's ``forward`` (transformers 5.x) runs its layer list with nothing
    that depends on a block's position in that loop (every block gets the same mask, rotary
    tables and cache object, and writes the KV cache at its own ``layer_idx``), so the list can
    be cut to ``layers[start:]`` and a forward can start mid-stack exactly.
    ``by_position``: that loop reads ``config.layer_types[i]`` by loop position ``i`` (qwen2/3,
    gemma2/3), so starting mid-stack is exact only when every layer has the same type (no
    alternating sliding-window layers).
    """

    attn: str
    mlp: str
    layers: str = "model.layers"
    parallel: bool | str = False
    ln1: str = "input_layernorm"
    midstack: bool = True
    by_position: bool = False

    def is_parallel(self, config: object) -> bool:
        """Whether this model's blocks are parallel-residual, given its (text) config."""
        if isinstance(self.parallel, bool):
            return self.parallel
        return bool(getattr(config, self.parallel, False))


#: Hugging Face ``config.model_type`` -> layout.
ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture("self_attn", "mlp"),
    "mistral": Architecture("self_attn", "mlp"),
    "mixtral": Architecture("self_attn", "mlp"),
    "qwen2": Architecture("self_attn", "mlp", by_position=True),
    "qwen3": Architecture("self_attn", "mlp", by_position=True),
    "gemma": Architecture("self_attn", "mlp"),
    "gemma2": Architecture(
        "post_attention_layernorm", "post_feedforward_layernorm", by_position=True
    ),
    "gemma3_text": Architecture(
        "post_attention_layernorm", "post_feedforward_layernorm", by_position=True
    ),
    "phi3": Architecture("self_attn", "mlp"),
    "olmo": Architecture("self_attn", "mlp"),
    "gpt2": Architecture("attn", "mlp", layers="transformer.h", ln1="ln_1"),
    "gpt_neox": Architecture(
        "attention", "mlp", layers="gpt_neox.layers", parallel="use_parallel_residual"
    ),
    "phi": Architecture("self_attn", "mlp", parallel=True),
    "gptj": Architecture(
        "attn", "mlp", layers="transformer.h", parallel=True, ln1="ln_1", midstack=False
    ),
}

#: Decoder-layer list paths tried in order when the architecture has no row (or its row's path
#: is missing on this model, e.g. remote code reusing a ``model_type``).
FALLBACK_LAYER_PATHS = (
    "model.layers",
    "transformer.h",
    "gpt_neox.layers",
    "model.decoder.layers",
    "transformer.layers",
    "layers",
)


def model_type_of(config: Any) -> str:
    """``model_type`` of a Hugging Face config, read from its text config (multimodal configs
    nest the decoder's)."""
    text_cfg = config.get_text_config()
    return str(getattr(text_cfg, "model_type", getattr(config, "model_type", "")))


def lookup(config: Any) -> tuple[str, Architecture | None, bool | None]:
    """``(model_type, row, parallel)`` for a Hugging Face config; ``row`` and ``parallel`` are
    None when the architecture has no row (only ``resid_pre`` / ``resid_post`` then)."""
    model_type = model_type_of(config)
    row = ARCHITECTURES.get(model_type)
    return model_type, row, None if row is None else row.is_parallel(config.get_text_config())
