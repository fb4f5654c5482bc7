"""The model a steerlab call works on: a backend (which runs it) plus its tokenizer and the facts
steering needs (layers, width, device, dtype, EOS ids, chat formatting)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from steerlab.backends.base import ModelFacts
from steerlab.errors import SteerlabError
from steerlab.models import prompting
from steerlab.models.prompting import Prompt


@dataclass(eq=False)
class Model:
    """A causal LM behind a backend, plus the facts steering needs.

    Attributes:
        backend: the adapter to its framework (``hf``, ``transformer_lens`` or ``nnsight``): its
            :class:`~steerlab.backends.base.ModelFacts` (layers, width, device, sites) serve any
            runner; the local runner also needs its forward pass and KV cache
            (:class:`~steerlab.backends.base.Backend`). The engine, recording and steering only
            use it.
        tokenizer: its tokenizer, with a pad token set (EOS when it had none), left padding.
        name: a stable id for metadata (``embedded`` -> ``SmolLM2-135M-Instruct``).
        chat: whether :meth:`format_prompt` applies the chat template by default.
        eos_token_ids: tokens that end a row (EOS and end-of-turn tokens).
        hf: the underlying Hugging Face ``PreTrainedModel`` when there is one (None for a
            TransformerLens ``HookedTransformer``).
    """

    backend: ModelFacts
    tokenizer: Any
    name: str
    chat: bool = True
    eos_token_ids: tuple[int, ...] = field(default=())
    hf: Any = None

    @property
    def layers(self) -> list[nn.Module]:
        """Decoder-layer modules (backends built on a Hugging Face model only)."""
        layers = getattr(self.backend, "layers", None)
        if layers is None:
            raise SteerlabError(f"the {self.backend.name} backend has no Hugging Face layer list")
        return list(layers)

    @property
    def d_model(self) -> int:
        return self.backend.d_model

    @property
    def n_layers(self) -> int:
        return self.backend.n_layers

    @property
    def device(self) -> torch.device:
        return self.backend.device

    @property
    def dtype(self) -> torch.dtype:
        return self.backend.dtype

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def format_prompt(
        self, text: str, system: str | None = None, chat: bool | None = None
    ) -> Prompt:
        """Return what to feed the model for a user message: a
        :class:`~steerlab.models.prompting.Prompt` (a ``str``) whose token ids keep user text from
        becoming special tokens.

        Applies the chat template (with a generation prompt) when the tokenizer has one and
        ``chat`` (default: ``self.chat``) is true; otherwise returns ``text`` (with ``system``
        prepended on its own line when given).
        """
        use_chat = (self.chat if chat is None else chat) and self.has_chat_template
        return prompting.format_prompt(self.tokenizer, text, system, bool(use_chat))

    def encode(self, text: str) -> list[int]:
        """Token ids for ``text``.

        A :class:`~steerlab.models.prompting.Prompt` from :meth:`format_prompt` gives its safe
        ids. Any other string is trusted text: special-token markers in it become special tokens,
        and BOS is added only when the text does not already start with it. Pass user text
        through :meth:`format_prompt` (``chat=False`` for no template).
        """
        if isinstance(text, Prompt):
            return list(text.ids)
        return prompting.trusted_ids(self.tokenizer, text)

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    def check_layer(self, layer: int, what: str = "layer") -> None:
        """Raise a clear error when ``layer`` is not a block index of this model."""
        if not 0 <= layer < self.n_layers:
            raise SteerlabError(
                f"{what} {layer} is out of range: {self.name} has {self.n_layers} layers "
                f"(valid: 0..{self.n_layers - 1})"
            )
