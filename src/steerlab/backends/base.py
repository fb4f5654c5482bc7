"""The backend protocol, in two capabilities.

A backend owns one framework's call conventions, KV cache and module layout (Hugging Face,
TransformerLens, nnsight). Everything above it speaks in :class:`~steerlab.sites.Site` names and
plain tensors.

- :class:`ModelFacts`, what any runner needs (a local loop, or an engine that owns its scheduler
  and KV cache): layers, width, device, dtype, which sites exist, and :meth:`ModelFacts.attach`,
  which installs edits for calls the *user* makes on the wrapped object (e.g. Hugging Face
  ``generate`` under ``steerlab.steering``); ``observe`` gets a :class:`CallInfo` at the start of
  each such call so positions come from that call's mask and cache position.
- :class:`Backend` adds what the local runner's loops need: a forward pass with edits and a KV
  cache.

  - :meth:`Backend.forward` runs the model on new tokens ``ids`` (B, S) given the *full* attention
    mask (B, P + S) (P tokens already in ``cache``) and the position ids (B, S) of the new tokens,
    applies ``edits`` at their sites, and returns the float32 logits of the last position (B, V).
    An edit is a function ``(B, S, d_model) -> (B, S, d_model)`` that sees the activation at its
    site (already including every upstream edit) and returns the value the model continues with
    (it may return its input unchanged, e.g. to record it). Edits at one site run in order.
  - ``stop_at`` ends the pass right after the edits at that site ran (activation recording does
    not need the later layers); ``forward`` then returns ``None``.
  - :meth:`Backend.new_cache` / :meth:`Backend.select_cache` create a KV cache and keep only some
    of its rows (finished rows leave a decoding batch).
  - :attr:`Backend.kv_cache`: a :class:`KVCacheOps` when the cache comes apart into per-layer
    tensors (continuous batching, shared prefixes and shared lower layers need it), else None
    (the engine then decodes fixed batches).

Positions are never computed here from the index inside the current chunk: the caller passes
position ids derived from the attention mask, and :class:`CallInfo` is derived the same way.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from steerlab.backends.kvcache import KV
from steerlab.errors import SteerlabError
from steerlab.sites import Site, SiteError, check_point

SiteFn = Callable[[torch.Tensor], torch.Tensor]  # (B, S, d) -> (B, S, d)
Edits = Mapping[Site, Sequence[SiteFn]]


class BackendUnavailable(SteerlabError):
    """The framework a backend needs is not installed (the message says what to install)."""


@dataclass(frozen=True)
class CallInfo:
    """What the steering context needs to know about one forward call made by the user.

    ``pos`` (B, S) absolute token index of each fed token (pads excluded from the count);
    ``valid`` (B, S) False on pads; ``prefill`` True when the call covers the whole sequence;
    ``n_real`` (B,) number of real tokens in each row so far, including this call's;
    ``ids`` (B, S) the fed token ids when the call has them (tells a new prompt from a decoding
    step without a KV cache, which re-feeds the whole sequence plus one token).
    """

    pos: torch.Tensor
    valid: torch.Tensor
    prefill: bool
    n_real: torch.Tensor
    ids: torch.Tensor | None = None


def call_info_from_mask(mask: torch.Tensor, s: int) -> CallInfo:
    """:class:`CallInfo` for ``s`` new tokens from the full 2-D attention mask (B, P + S)."""
    full = mask.to(torch.long)
    pos = (full.cumsum(-1) - 1)[:, -s:]  # (B, S) absolute token index
    return CallInfo(
        pos=pos, valid=full[:, -s:].bool(), prefill=full.shape[1] == s, n_real=full.sum(-1)
    )


def call_info_from_positions(pos: torch.Tensor) -> CallInfo:
    """:class:`CallInfo` when no padding exists (no 2-D mask): positions given per token."""
    b, s = pos.shape
    return CallInfo(
        pos=pos,
        valid=torch.ones(b, s, dtype=torch.bool, device=pos.device),
        prefill=int(pos[0, 0]) == 0,
        n_real=pos[:, -1] + 1,
    )


def first_tensor(output: Any) -> torch.Tensor:
    """The activation inside a module output (a tensor, or a tuple whose first item is one)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise SteerlabError(f"unsupported module output type {type(output).__name__}")


def replace_first(output: Any, h: torch.Tensor) -> Any:
    """``output`` with its activation replaced by ``h`` (same container type)."""
    return h if isinstance(output, torch.Tensor) else (h, *output[1:])


def run_edits(fns: Sequence[SiteFn], h: torch.Tensor) -> torch.Tensor:
    """Apply the edits at one site in order."""
    for fn in fns:
        h = fn(h)
    return h


class KVCacheOps(abc.ABC):
    """A backend's KV cache taken apart into per-layer tensors (:data:`KV`) and put back, and held
    in slot buffers whose rows the continuous loop reuses (a decode step appends in place)."""

    @abc.abstractmethod
    def tensors(self, cache: Any) -> KV | None:
        """The per-layer ``(keys, values)`` tensors (B, H, T, D) of a cache made by
        :meth:`Backend.new_cache` (or :meth:`from_tensors`) and filled by :meth:`Backend.forward`;
        None when this cache's layers cannot be taken apart (e.g. sliding windows)."""

    @abc.abstractmethod
    def from_tensors(self, kv: KV) -> Any:
        """A cache for :meth:`Backend.forward` holding ``kv`` (the inverse of :meth:`tensors`)."""

    @abc.abstractmethod
    def slots(self, kv: KV) -> Any:
        """A cache holding ``kv`` in slot buffers (spare columns; rows are slots)."""

    @abc.abstractmethod
    def place(self, cache: Any, slots: torch.Tensor, kv: KV) -> int:
        """Write ``kv`` (n rows, width w) into rows ``slots`` (n,) of a slot cache, right-aligned
        with its last column (earlier columns of those rows are zeroed: the caller masks them).
        Returns how many zero columns were added on the left of every row when ``w`` exceeded
        the cache's width (the caller pads its mask by as much)."""

    @abc.abstractmethod
    def drop_leading(self, cache: Any, n: int) -> None:
        """Remove the first ``n`` columns (padding in every row) of a slot cache."""

    @abc.abstractmethod
    def keep_slots(self, cache: Any, keep: torch.Tensor) -> None:
        """Keep rows ``keep`` (b',) of a slot cache."""


class ModelFacts(abc.ABC):
    """What any runner needs to know about a model behind one framework (see the module doc)."""

    #: registry name: ``hf``, ``transformer_lens``, ``nnsight``
    name: ClassVar[str]

    #: a stable model id for metadata and error messages
    label: str
    #: Hugging Face ``model_type`` of the architecture (the key into
    #: :data:`steerlab.backends.architectures.ARCHITECTURES`)
    model_type: str = ""
    #: parallel-residual blocks (no resid_mid); None: no sub-block table for this architecture
    parallel: bool | None = None

    @property
    @abc.abstractmethod
    def n_layers(self) -> int: ...

    @property
    @abc.abstractmethod
    def d_model(self) -> int: ...

    @property
    @abc.abstractmethod
    def device(self) -> torch.device: ...

    @property
    @abc.abstractmethod
    def dtype(self) -> torch.dtype: ...

    @property
    @abc.abstractmethod
    def wrapped(self) -> Any:
        """The framework object the user handed us (or we loaded)."""

    def check_site(self, site: Site) -> None:
        """Raise :class:`~steerlab.sites.SiteError` naming the site and model when this model
        cannot expose ``site`` (layer out of range, resid_mid on a parallel block, ...)."""
        if not 0 <= site.layer < self.n_layers:
            raise SiteError(
                f"{site.name}: layer {site.layer} is out of range: {self.label} has "
                f"{self.n_layers} layers (valid: 0..{self.n_layers - 1})"
            )
        check_point(site.point, self.model_type, self.label, self.parallel)

    def attach(
        self, edits: Edits, observe: Callable[[CallInfo], None]
    ) -> contextlib.AbstractContextManager[None]:
        """Install ``edits`` on the wrapped object for calls the user makes inside the block."""
        raise SteerlabError(
            f"the {self.name} backend cannot steer calls made outside steerlab; "
            "use steerlab.generate (rows carry their interventions)"
        )

    def count_hooks(self) -> int:
        """Number of hooks this backend could have left behind (tests: none after exit)."""
        return 0


class Backend(ModelFacts):
    """A model the local runner drives itself: a forward pass with edits at named sites, and a KV
    cache (see the module doc)."""

    @abc.abstractmethod
    def new_cache(self) -> Any:
        """An empty KV cache for :meth:`forward`."""

    @abc.abstractmethod
    def select_cache(self, cache: Any, keep: torch.Tensor) -> Any:
        """Keep rows ``keep`` (b',) of ``cache``; returns the cache to use from now on."""

    @property
    def kv_cache(self) -> KVCacheOps | None:
        """Operations on this backend's KV cache as tensors, or None when it cannot be taken
        apart (the engine then keeps each batch's rows together)."""
        return None

    @abc.abstractmethod
    def forward(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Any | None = None,
        edits: Edits | None = None,
        stop_at: Site | None = None,
    ) -> torch.Tensor | None:
        """Logits (B, V) float32 of the last fed position, or None when stopped at ``stop_at``.

        ``ids`` (B, S) long; ``mask`` (B, P + S) long; ``positions`` (B, S) long; ``cache``
        None runs without a KV cache (then P == 0).
        """

    @property
    def can_start_midstack(self) -> bool:
        """Whether :meth:`forward_from` is implemented *and exact* for this model (False by
        default; a backend returns True only for architectures whose layer loop it verified)."""
        return False

    def forward_from(
        self,
        start: int,
        resid: torch.Tensor,
        ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Any | None = None,
        edits: Edits | None = None,
    ) -> torch.Tensor:
        """Like :meth:`forward`, but runs only decoder blocks ``start .. n_layers - 1``.

        ``resid`` (B, S, d_model) is the residual stream entering block ``start`` (what a
        ``resid_pre`` edit at layer ``start`` sees, before any edit there; e.g. recorded during an
        earlier :meth:`forward` by an edit at ``Site(start, "resid_pre")`` that returns its input);
        it replaces what the lower blocks would have produced for ``ids``. ``ids``, ``mask`` and
        ``positions`` are exactly what :meth:`forward` would get (the embeddings are still
        computed, then overwritten). Edits at sites of layer >= ``start`` apply as in
        :meth:`forward`, including a ``resid_pre`` edit at ``start`` (it sees ``resid`` and may
        change it); edits at layers < ``start`` are never called.

        ``cache``: only layers >= ``start`` are appended to; layers < ``start`` are left as they
        were. The caller guarantees every cache layer holds the same number of positions before
        the call (masks and cache positions are derived from layer 0's length). Returns the float32
        logits (B, V) of the last position. Raises NotImplementedError where
        :attr:`can_start_midstack` is False.
        """
        raise NotImplementedError(f"the {self.name} backend cannot start a forward mid-stack")


@contextlib.contextmanager
def no_edits() -> Iterator[None]:
    yield
