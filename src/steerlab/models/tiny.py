"""Tiny random models built from configs (no download), for tests and quick demos.

Every tiny model shares a byte-level tokenizer (256 byte tokens + 3 specials) with a minimal chat
template, so chat formatting, padding and EOS behave like a real model's. Weights are drawn from a
fixed seed with a large init scale so that greedy decisions have clear margins (tests compare
batched vs alone and cached vs uncached token by token).
"""

from __future__ import annotations

from typing import Any

import torch

_SPECIALS = ("<pad>", "<s>", "</s>")
_CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant:{% endif %}"
)
VOCAB_SIZE = 256 + len(_SPECIALS)


def build_tiny_tokenizer() -> Any:
    """A reversible byte-level BPE tokenizer with no merges (one token per byte)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {s: i for i, s in enumerate(_SPECIALS)}
    vocab.update({ch: i + len(_SPECIALS) for i, ch in enumerate(alphabet)})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
    )
    tok.chat_template = _CHAT_TEMPLATE
    return tok


def _config(kind: str) -> Any:
    import transformers as tf

    common: dict[str, Any] = {
        "vocab_size": VOCAB_SIZE,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    if kind == "tiny-llama":
        return tf.LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            **common,
        )
    if kind == "tiny-qwen2":
        return tf.Qwen2Config(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            **common,
        )
    if kind == "tiny-gemma2":
        return tf.Gemma2Config(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=512,
            sliding_window=64,
            **common,
        )
    if kind == "tiny-mistral":
        return tf.MistralConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            sliding_window=None,
            **common,
        )
    if kind == "tiny-phi":
        return tf.PhiConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=3,
            num_attention_heads=4,
            max_position_embeddings=512,
            **common,
        )
    if kind == "tiny-gpt2":
        return tf.GPT2Config(n_embd=64, n_layer=3, n_head=4, n_positions=512, **common)
    if kind == "tiny-neox":
        return tf.GPTNeoXConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=3,
            num_attention_heads=4,
            max_position_embeddings=512,
            **common,
        )
    raise ValueError(f"unknown tiny model {kind!r}")


def build_tiny_model(kind: str, seed: int = 0, init_std: float = 0.15) -> tuple[Any, Any]:
    """Return ``(hf_model, tokenizer)`` for ``kind`` with seeded random weights (fp32, eval)."""
    from transformers import AutoModelForCausalLM

    config = _config(kind)
    config.initializer_range = init_std
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    finally:
        torch.random.set_rng_state(gen_state)
    model.generation_config.pad_token_id = 0
    return model.eval(), build_tiny_tokenizer()
