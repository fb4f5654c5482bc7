"""The vLLM runner: the runner seam's second implementation, rows decoded by a vLLM engine.

vLLM keeps its scheduler (continuous batching), paged KV cache and prefix cache; steerlab hands
it the rows as requests and its workers steer them (:mod:`steerlab.engine.vllm_worker`):

- the call's interventions are compiled once into a :class:`~steerlab.engine.plan.SteeringPlan`
  (one row per request) and reach every worker once per call; each request names its row in
  ``SamplingParams.extra_args``;
- the prefix cache stays on and stays correct: a steered request's ``cache_salt`` is a digest
  of its steering, so KV blocks computed under one steering are never reused under another
  (or unsteered); unsteered requests share blocks as vLLM always does;
- tokens, per-token log-probabilities and entropies come from the workers (raw logits, as the
  local loops compute them); the text is decoded here, with the model's tokenizer;
- seeds go to vLLM per request (``SamplingParams.seed``), so a row's sampled text does not
  depend on its batch. Greedy rows match the local runner token for token; sampled rows use
  vLLM's sampler (the same distribution, other draws).

Logit scoring runs each prompt as a one-token request and takes the whole next-token
log-probability vector from the sampler's input: the same raw logits, exact.
"""

from __future__ import annotations

import hashlib
import itertools
import pickle
import uuid
from collections.abc import Sequence
from typing import Any

import torch

from steerlab.engine.plan import Slot, SteeringPlan, compile_plan
from steerlab.engine.rows import GenerationConfig, OnFinish, Request, RowResult
from steerlab.engine.seam import Runner, ScoreBatches
from steerlab.engine.vllm_worker import EXTRA_KEY
from steerlab.errors import SteerlabError
from steerlab.interventions import Intervention, feature_of
from steerlab.models import Model
from steerlab.sites import Site

_IDS = itertools.count()


def steering_salt(ivs: Sequence[Intervention]) -> str | None:
    """The prefix-cache salt of a row's steering: None when unsteered, else a digest of every
    intervention (kind, site, coefficient, scale, window, vector values)."""
    if not ivs:
        return None
    h = hashlib.sha256()
    for iv in ivs:
        h.update(
            repr((iv.kind, iv.site.name, iv.alpha, iv.scale_factor(), iv.window.bounds)).encode()
        )
        if iv.kind == "sae_clamp" and iv.sae is not None:
            i = feature_of(iv)
            h.update(repr(i).encode())
            for t in (iv.sae.W_enc[:, i], iv.sae.W_dec[i]):
                h.update(t.detach().to("cpu", torch.float32).numpy().tobytes())
        else:
            h.update(iv.vector.unit(iv.src).to(torch.float32).numpy().tobytes())
    return h.hexdigest()[:32]


def compact(plan: SteeringPlan) -> tuple[SteeringPlan, dict[Site, list[torch.Tensor]]]:
    """The plan with each slot's identical rows stored once, and per site and slot the (B,) index
    of each plan row's stored row: a grid of S settings over many prompts travels as S rows per
    slot, not one per request. Slots holding SAE clamps are kept whole."""
    sites: dict[Site, tuple[Slot, ...]] = {}
    remap: dict[Site, list[torch.Tensor]] = {}
    for site, slots in plan.sites.items():
        kept, maps = [], []
        for slot in slots:
            if slot.sae is not None:
                kept.append(slot)
                maps.append(torch.arange(plan.batch_size))
                continue
            parts = [getattr(slot, k).reshape(plan.batch_size, -1).numpy() for k in _KEYS]
            seen: dict[bytes, int] = {}  # a row's bytes -> its stored index
            keep: list[int] = []  # stored index -> the first plan row holding it
            index: list[int] = []
            for r in range(plan.batch_size):
                key = b"".join(p[r].tobytes() for p in parts)
                if key not in seen:
                    seen[key] = len(keep)
                    keep.append(r)
                index.append(seen[key])
            kept.append(slot.select(torch.tensor(keep)))
            maps.append(torch.tensor(index))
        sites[site] = tuple(kept)
        remap[site] = maps
    return SteeringPlan(sites, plan.batch_size), remap


_KEYS = ("add", "unit", "coef", "target", "is_clamp", "lo", "hi")


class VLLMRunner(Runner):
    """Rows through a vLLM engine (see the module doc)."""

    name = "vllm"

    def __init__(self, model: Model) -> None:
        self.model = model
        self.llm: Any = model.backend.wrapped

    # ------------------------------------------------------------------ one call
    def _run(
        self,
        requests: Sequence[Request],
        config: GenerationConfig,
        want_logp: bool,
        on_finish: OnFinish | None,
        read: tuple[list[Site], list[dict[int, float]]] | None = None,
        overflow: dict[int, bool] | None = None,
    ) -> tuple[list[RowResult], dict[int, Any], Any]:
        """Run ``requests``; returns the results, each row's next-token log-probabilities (when
        ``want_logp``) and the recorded sums (when ``read``). A row whose steering overflowed
        raises, or, given ``overflow``, is flagged there."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        rows = [list(r.interventions) for r in requests] + [[]]  # last row: nobody's
        plan: SteeringPlan = compile_plan(self.model, rows, device=torch.device("cpu"))
        call = uuid.uuid4().hex
        engine = self.llm.llm_engine
        eos = set(self.model.eos_token_ids)
        results: list[RowResult | None] = [None] * len(requests)
        logps: dict[int, Any] = {}
        ids: dict[str, int] = {}
        spec = None
        if read is not None:  # rows by request index
            spec = pickle.dumps((read[0], dict(enumerate(read[1]))))
        shipped = pickle.dumps(compact(plan))
        self.llm.collective_rpc("steerlab_begin", args=(call, shipped, want_logp, spec))
        recorded = None
        try:
            for i, req in enumerate(requests):
                params = SamplingParams(
                    max_tokens=req.max_new_tokens,
                    temperature=config.temperature,
                    top_p=config.top_p,
                    seed=req.seed if config.temperature > 0 else None,
                    stop_token_ids=sorted(eos) if config.stop_at_eos else None,
                    ignore_eos=not config.stop_at_eos,
                    detokenize=False,
                    extra_args={EXTRA_KEY: [call, i]},
                )
                prompt = TokensPrompt(prompt_token_ids=list(req.ids))
                # a recorded prompt is computed in full: no cached block may stand in for it
                salt = f"{call}-{i}" if read is not None else steering_salt(req.interventions)
                if salt is not None:
                    prompt["cache_salt"] = salt
                rid = f"steerlab-{next(_IDS)}"
                ids[rid] = i
                engine.add_request(rid, prompt, params)
            while engine.has_unfinished_requests():
                done = [o for o in engine.step() if o.finished]
                if not done:
                    continue
                idx = [ids[o.request_id] for o in done]
                stats = pickle.loads(self.llm.collective_rpc("steerlab_take", args=(call, idx))[0])
                finished = []
                for i, out in zip(idx, done, strict=True):
                    st = stats[i]
                    if overflow is not None:
                        overflow[i] = st.overflow
                    elif st.overflow:
                        setting = ", ".join(iv.describe() for iv in requests[i].interventions)
                        raise SteerlabError(
                            "steering made the model's output non-finite (NaN/inf) in 1 row(s), "
                            f"e.g. under {setting}: the coefficient is far too large"
                        )
                    res = self._result(requests[i], out.outputs[0], st, eos, config)
                    results[i] = res
                    logps[i] = st.logp
                    finished.append(res)
                if on_finish is not None:
                    on_finish(idx, finished)
            if read is not None:
                recorded = pickle.loads(
                    self.llm.collective_rpc("steerlab_recorded", args=(call,))[0]
                )
        finally:
            if engine.has_unfinished_requests():
                engine.abort_request(list(ids))
            self.llm.collective_rpc("steerlab_end", args=(call,))
        return [r for r in results if r is not None], logps, recorded

    def _result(
        self, req: Request, out: Any, st: Any, eos: set[int], config: GenerationConfig
    ) -> RowResult:
        tokens = list(out.token_ids)
        reason = "length"
        if config.stop_at_eos and tokens and tokens[-1] in eos and out.finish_reason == "stop":
            tokens, reason = tokens[:-1], "eos"
        stats = [st.tokens.get(k) for k in range(len(tokens))]
        if any(s is None or s[0] != t for s, t in zip(stats, tokens, strict=True)):
            raise SteerlabError(
                "the vllm runner lost track of a row's tokens (the engine scheduled it in a way "
                "steerlab does not follow); please report this"
            )
        return RowResult(
            text=self.model.decode(tokens),
            token_ids=tuple(tokens),
            logprobs=tuple(s[1] for s in stats if s is not None),
            entropies=tuple(s[2] for s in stats if s is not None),
            finish_reason=reason,
            prompt_tokens=len(req.ids),
        )

    # ------------------------------------------------------------------ the seam
    def generate(
        self,
        requests: Sequence[Request],
        config: GenerationConfig,
        on_finish: OnFinish | None = None,
        stats: dict[str, int] | None = None,
    ) -> list[RowResult]:
        if not requests:
            return []
        results, _, _ = self._run(requests, config, False, on_finish)
        if stats is not None:
            stats["rows"] = len(requests)
            stats["tokens_generated"] = sum(len(r.token_ids) for r in results)
        return results

    def score(
        self,
        encoded: Sequence[Sequence[int]],
        interventions: Sequence[tuple[Intervention, ...]],
        batch_size: int,
        share_prefix: bool = True,
        stats: dict[str, int] | None = None,
    ) -> ScoreBatches:
        config = GenerationConfig(max_new_tokens=1, stop_at_eos=False)
        for start in range(0, len(encoded), max(1, batch_size) * 8):
            idx = list(range(start, min(len(encoded), start + max(1, batch_size) * 8)))
            requests = [Request(list(encoded[i]), tuple(interventions[i]), 0, 1) for i in idx]
            _, logps, _ = self._run(requests, config, True, None)
            rows = [logps[j] for j in range(len(idx))]
            if any(r is None for r in rows):
                raise SteerlabError("the vllm runner got no next-token distribution for a prompt")
            yield idx, torch.stack(rows)

    def record_means(
        self,
        sequences: Sequence[Sequence[int]],
        weights: Sequence[dict[int, float]],
        sites: Sequence[Site],
        batch_size: int,
    ) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        config = GenerationConfig(max_new_tokens=1, stop_at_eos=False)
        acts: dict[int, list[torch.Tensor]] = {s.layer: [] for s in sites}
        norms: dict[int, list[torch.Tensor]] = {s.layer: [] for s in sites}
        step = max(1, batch_size) * 8
        for start in range(0, len(sequences), step):
            chunk = range(start, min(len(sequences), start + step))
            requests = [Request(list(sequences[i]), (), 0, 1) for i in chunk]
            _, _, (a, n) = self._run(
                requests, config, False, None, read=(list(sites), [weights[i] for i in chunk])
            )
            for s in sites:
                acts[s.layer].append(a[s.layer][: len(chunk)])
                norms[s.layer].append(n[s.layer][: len(chunk)])
        return (
            {k: torch.cat(v) for k, v in acts.items()},
            {k: torch.cat(v) for k, v in norms.items()},
        )

    def steered_logprobs(
        self, sequences: Sequence[Sequence[int]], interventions: Sequence[Sequence[Intervention]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Next-token log-probabilities (B, V) after each sequence, row ``r`` steered by
        ``interventions[r]``, and a (B,) flag of rows whose steering overflowed (not raised)."""
        config = GenerationConfig(max_new_tokens=1, stop_at_eos=False)
        requests = [
            Request(list(seq), tuple(ivs), 0, 1)
            for seq, ivs in zip(sequences, interventions, strict=True)
        ]
        flags: dict[int, bool] = {}
        _, logps, _ = self._run(requests, config, True, None, overflow=flags)
        vocab = next((v.shape[-1] for v in logps.values() if v is not None), 0)
        rows = [
            logps[i] if logps.get(i) is not None else torch.full((vocab,), float("nan"))
            for i in range(len(requests))
        ]
        bad = torch.tensor([flags.get(i, False) for i in range(len(requests))])
        return torch.stack(rows), bad
