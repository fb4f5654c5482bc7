"""The runner seam's interface: what executes checked, encoded rows for one model.

:class:`Runner` is implemented by :class:`steerlab.engine.runner.LocalRunner` (this package's
loops) and :class:`steerlab.engine.vllm_runner.VLLMRunner` (a vLLM engine); see
:mod:`steerlab.engine.runner` for the seam as a whole.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence

import torch

from steerlab.engine.rows import GenerationConfig, OnFinish, Request, RowResult
from steerlab.errors import SteerlabError
from steerlab.interventions import Intervention
from steerlab.sites import Site

#: ``(indices, logp)``: a batch of prompts and their (b, V) float32 next-token log-probabilities
ScoreBatches = Iterator[tuple[list[int], torch.Tensor]]


class Runner(abc.ABC):
    """Executes checked, encoded rows for one model (see the module doc)."""

    #: a short name for messages
    name: str = "runner"

    @abc.abstractmethod
    def generate(
        self,
        requests: Sequence[Request],
        config: GenerationConfig,
        on_finish: OnFinish | None = None,
        stats: dict[str, int] | None = None,
    ) -> list[RowResult]:
        """Decode every request; results in the order of ``requests``. ``stats``, when given, is
        filled with counts of the work done (what a runner can count)."""

    def score(
        self,
        encoded: Sequence[Sequence[int]],
        interventions: Sequence[tuple[Intervention, ...]],
        batch_size: int,
        share_prefix: bool = True,
        stats: dict[str, int] | None = None,
    ) -> ScoreBatches:
        """Yield ``(indices, logp)`` for every prompt exactly once: its (b, V) float32
        next-token log-probabilities after prompt ``encoded[i]`` steered by
        ``interventions[i]``."""
        raise SteerlabError(f"the {self.name} runner cannot score next-token logits")

    def record_means(
        self,
        sequences: Sequence[Sequence[int]],
        weights: Sequence[dict[int, float]],
        sites: Sequence[Site],
        batch_size: int,
    ) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        """Weighted sums of activations per sequence at each site (unsteered): ``weights[i]``
        maps token indices of ``sequences[i]`` to weights; returns ``(acts, norms)`` by layer,
        (N, d_model) and (N,) float32 on the CPU (the local loops record through
        :mod:`steerlab.engine.record` instead)."""
        raise SteerlabError(f"the {self.name} runner cannot record activations")

    def steered_logprobs(
        self, sequences: Sequence[Sequence[int]], interventions: Sequence[Sequence[Intervention]]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Next-token log-probabilities (B, V) after each sequence, row ``r`` steered by
        ``interventions[r]``, with a (B,) flag of rows whose steering overflowed (not raised);
        the local loops answer this in :func:`steerlab.engine.score.steered_logprobs`."""
        raise SteerlabError(f"the {self.name} runner cannot score steered sequences")
