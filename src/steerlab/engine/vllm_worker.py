"""Steering inside vLLM's workers: the worker extension the vLLM runner starts the engine with.

vLLM mixes :class:`SteeringExtension` into its worker class (``worker_extension_cls``); the
runner (:mod:`steerlab.engine.vllm_runner`) calls its ``steerlab_*`` methods on every rank through
``collective_rpc``. Nothing here runs in the user's process, and nothing imports vLLM: the worker
is reached through the few attributes of vLLM's model runner named below, and a runner without
them is refused in one sentence.

One call's steering, in the worker:

1. ``steerlab_begin(call, plan)``: the compiled :class:`~steerlab.engine.plan.SteeringPlan` of
   the call's rows (plus one last, empty row for tokens of other requests and padding) arrives
   once, pickled; hooks go on the sites it steers.
2. Before every forward pass, the model runner's batch (request order, each request's scheduled
   token span, its prompt length) and the positions vLLM feeds give each token of the flat
   ``[num_tokens, hidden]`` layout its plan row and its position relative to its prompt's end:
   the same coordinates the local loops use, so :meth:`SteeringPlan.apply_tokens` steers token
   for token as the padded layout does. A request carries its row in
   ``SamplingParams.extra_args["steerlab"] = [call, row]``.
3. The hooks see the residual stream as the sum vLLM keeps in two parts (a decoder layer returns
   ``(mlp_out, residual)`` and the next layer's fused add+norm adds them): the edit gets the sum,
   and passes on ``(steered sum, zeros)``, which the next fused add turns into exactly the
   steered sum.
4. Around the sampler: each sampled token's log-probability and the entropy of its distribution
   (from the raw logits, as the local loops compute them), and the whole next-token
   log-probability vector when the call scores logits; ``steerlab_take`` hands them over by row.
5. ``steerlab_end`` removes every hook and wrapper (also after errors on the runner's side).
"""

from __future__ import annotations

import inspect
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from steerlab.engine.plan import SteeringPlan
from steerlab.sites import POINTS, Site

#: the key of ``SamplingParams.extra_args`` that carries ``[call, row]``
EXTRA_KEY = "steerlab"
#: what vLLM's ``worker_extension_cls`` is set to
EXTENSION_PATH = "steerlab.engine.vllm_worker.SteeringExtension"

_RUNNER_NEEDS = ("input_batch", "query_start_loc", "requests", "_model_forward", "sampler")


@dataclass
class _RowStats:
    """What one row sampled, by generated-token index: ``(token, logprob, entropy)``."""

    tokens: dict[int, tuple[int, float, float]] = field(default_factory=dict)
    logp: torch.Tensor | None = None  # (V,) float32 after the prompt, when scoring
    overflow: bool = False


class _Call:
    """One steered call's live state in a worker."""

    def __init__(
        self,
        runner: Any,
        layers: nn.ModuleList,
        call: str,
        plan: SteeringPlan,
        remap: dict[Site, list[torch.Tensor]],
    ) -> None:
        self.runner = runner
        self.layers = layers
        self.call = call
        self.plan = plan
        self.remap = remap  # per site and slot: plan row -> the slot's stored row
        self.null = plan.batch_size - 1  # the plan's last row steers nothing
        self.want_logp = False
        self.stats: dict[int, _RowStats] = {}
        self.row: torch.Tensor | None = None  # (N,) plan row of each fed token
        self.rel: torch.Tensor | None = None  # (N,) its position relative to the prompt end
        self.sample_rows: list[tuple[int, int]] = []  # per sampled request: (row, gen index)
        self._logp: torch.Tensor | None = None
        self._entropy: torch.Tensor | None = None
        self._undo: list[Callable[[], None]] = []
        #: recording: the sites read, each row's {absolute position: weight}, and the sums
        self.read: tuple[Site, ...] = ()
        self.read_weights: dict[int, dict[int, float]] = {}
        self.weight: torch.Tensor | None = None  # (N,) each fed token's weight in its row's mean
        self.acts: dict[int, torch.Tensor] = {}  # layer -> (rows, d) float32
        self.norms: dict[int, torch.Tensor] = {}  # layer -> (rows,)

    # ------------------------------------------------------------------ install / remove
    def install(self) -> None:
        try:
            for site in sorted(set(self.plan.sites) | set(self.read), key=lambda s: s.order):
                self._hook(site)
            self._wrap_forward()
            self._hook_sampler()
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        while self._undo:
            self._undo.pop()()

    def _hook(self, site: Site) -> None:
        layer = self.layers[site.layer]
        point = site.point
        if point == "resid_post":
            handle = layer.register_forward_hook(lambda m, a, out: self._steer_pair(site, out))
        elif point == "resid_pre":
            sig = inspect.signature(layer.forward)
            handle = layer.register_forward_pre_hook(
                lambda m, a, kw: self._steer_layer_input(site, sig, a, kw), with_kwargs=True
            )
        elif point == "resid_mid":
            norm = _child(layer, ("post_attention_layernorm",))
            handle = norm.register_forward_pre_hook(
                lambda m, a, kw: self._steer_norm_input(site, a, kw), with_kwargs=True
            )
        elif point == "attn_out":
            attn = _child(layer, ("self_attn", "attn", "attention"))
            handle = attn.register_forward_hook(lambda m, a, out: self._steer_tensor(site, out))
        else:  # mlp_out
            mlp = _child(layer, ("mlp", "feed_forward"))
            handle = mlp.register_forward_hook(lambda m, a, out: self._steer_tensor(site, out))
        self._undo.append(handle.remove)

    def _wrap_forward(self) -> None:
        runner = self.runner
        inner = runner._model_forward

        def forward(*args: Any, **kwargs: Any) -> Any:
            self._locate(kwargs["positions"] if "positions" in kwargs else args[1])
            return inner(*args, **kwargs)

        runner._model_forward = forward
        self._undo.append(lambda: delattr(runner, "_model_forward"))

    def _hook_sampler(self) -> None:
        sampler = self.runner.sampler
        pre = sampler.register_forward_pre_hook(self._before_sampling, with_kwargs=True)
        post = sampler.register_forward_hook(self._after_sampling)
        self._undo.extend((pre.remove, post.remove))

    # ------------------------------------------------------------------ token coordinates
    def _row_of(self, req_id: str) -> tuple[int, int]:
        """``(plan row, prompt length)`` of a scheduled request."""
        state = self.runner.requests[req_id]
        params = state.sampling_params
        extra = (params.extra_args or {}).get(EXTRA_KEY) if params is not None else None
        n_prompt = len(state.prompt_token_ids or ())
        if not extra or extra[0] != self.call:
            return self.null, n_prompt
        return int(extra[1]), n_prompt

    def _locate(self, positions: torch.Tensor) -> None:
        """Each fed token's plan row and position relative to its prompt end, from the runner's
        batch (request order and token spans) and the positions vLLM feeds."""
        batch = self.runner.input_batch
        n_reqs = int(batch.num_reqs)
        starts = self.runner.query_start_loc.np[: n_reqs + 1].tolist()
        n = int(positions.shape[0])
        pos = positions.to("cpu", torch.long)
        row = torch.full((n,), self.null, dtype=torch.long)
        plen = torch.zeros(n, dtype=torch.long)
        weight = torch.zeros(n) if self.read else None
        self.sample_rows = []
        for i, req_id in enumerate(batch.req_ids[:n_reqs]):
            r, n_prompt = self._row_of(req_id)
            a, b = starts[i], starts[i + 1]
            row[a:b] = r
            plen[a:b] = n_prompt
            wanted = self.read_weights.get(r)
            if weight is not None and wanted:
                for t, p in enumerate(pos[a:b].tolist()):
                    weight[a + t] = wanted.get(p, 0.0)
            # the token sampled after this step's last token of the request, as an index among
            # the generated tokens (negative: a prompt chunk whose sample vLLM discards)
            self.sample_rows.append((r, int(pos[b - 1]) + 1 - n_prompt if b > a else -1))
        device = positions.device
        self.row = row.to(device)
        self.rel = (pos - plen).to(device)
        self.weight = None if weight is None else weight.to(device)

    # ------------------------------------------------------------------ the edits
    def _apply(self, site: Site, h: torch.Tensor) -> torch.Tensor:
        row, rel = self.row, self.rel
        if row is None or rel is None or row.shape[0] != h.shape[0]:
            raise RuntimeError(f"steerlab: {site.name} ran before the batch was located")
        out = h
        if site in self.plan.sites:
            for slot, index in zip(self.plan.sites[site], self.remap[site], strict=True):
                out = slot.apply_tokens(out, index.index_select(0, row), rel)
            bad = ~torch.isfinite(out.float().pow(2).sum(-1))  # (N,)
            if bool(bad.any()):
                for r in row[bad].unique().tolist():
                    if r != self.null:
                        self.stats.setdefault(int(r), _RowStats()).overflow = True
        if site in self.read and self.weight is not None:
            self._accumulate(site.layer, out, row, self.weight)
        return out

    def _accumulate(
        self, layer: int, h: torch.Tensor, row: torch.Tensor, weight: torch.Tensor
    ) -> None:
        """Add each token's weighted activation and norm to its row's sums at ``layer``."""
        rows = self.plan.batch_size  # plan rows (the remap only shortens the slots)
        if layer not in self.acts:
            self.acts[layer] = torch.zeros(rows, h.shape[-1], device=h.device)
            self.norms[layer] = torch.zeros(rows, device=h.device)
        x = h.float()
        self.acts[layer].index_add_(0, row, weight[:, None] * x)
        self.norms[layer].index_add_(0, row, weight * x.norm(dim=-1))

    def _steer_tensor(self, site: Site, out: Any) -> Any:
        if isinstance(out, torch.Tensor):
            return self._apply(site, out)
        return (self._apply(site, out[0]), *out[1:])

    def _steer_pair(self, site: Site, out: Any) -> Any:
        """A decoder layer's output: ``(hidden, residual)`` halves of the stream, or the stream."""
        if isinstance(out, tuple) and len(out) == 2 and out[1] is not None:
            hidden, residual = out
            return self._apply(site, hidden + residual), torch.zeros_like(residual)
        return self._steer_tensor(site, out)

    def _steer_layer_input(
        self, site: Site, sig: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        bound = sig.bind(*args, **kwargs)
        hidden = bound.arguments["hidden_states"]
        residual = bound.arguments.get("residual")
        if residual is None:
            bound.arguments["hidden_states"] = self._apply(site, hidden)
        else:
            bound.arguments["hidden_states"] = self._apply(site, hidden + residual)
            bound.arguments["residual"] = torch.zeros_like(residual)
        return tuple(bound.args), dict(bound.kwargs)

    def _steer_norm_input(
        self, site: Site, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The post-attention fused add+norm: its inputs sum to the residual after attention."""
        vals = list(args)
        hidden = vals[0] if vals else kwargs["x"]
        residual = vals[1] if len(vals) > 1 else kwargs.get("residual")
        if residual is None:
            raise RuntimeError("steerlab: resid_mid needs the fused residual add")
        steered, zeros = self._apply(site, hidden + residual), torch.zeros_like(residual)
        kw = dict(kwargs)
        if len(vals) > 1:
            vals[0], vals[1] = steered, zeros
            return tuple(vals), kw
        kw["residual"] = zeros
        if vals:
            return (steered, *vals[1:]), kw
        kw["x"] = steered
        return (), kw

    # ------------------------------------------------------------------ the sampler
    def _before_sampling(self, module: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        logits = kwargs["logits"] if "logits" in kwargs else args[0]
        if logits is None:  # a rank without the logits (tensor parallel)
            return
        logp = torch.log_softmax(logits.float(), dim=-1)
        p = logp.exp()
        ent = -torch.bmm(p.unsqueeze(1), logp.unsqueeze(2)).view(-1)
        bad = ent.isnan()
        if bool(bad.any()):
            ent[bad] = -(p[bad] * logp[bad]).nan_to_num(0.0).sum(-1)
        self._logp, self._entropy = logp, ent

    def _after_sampling(self, module: nn.Module, args: Any, output: Any) -> None:
        logp, ent = self._logp, self._entropy
        self._logp = self._entropy = None
        if logp is None or ent is None:
            return
        sampled = output.sampled_token_ids[:, 0].to("cpu", torch.long)
        if sampled.shape[0] != len(self.sample_rows):
            return  # not a step this call located (e.g. a warm-up run)
        for i, (r, k) in enumerate(self.sample_rows):
            if r == self.null or k < 0:
                continue
            tok = int(sampled[i])
            st = self.stats.setdefault(r, _RowStats())
            st.tokens[k] = (tok, float(logp[i, tok]), float(ent[i]))
            if k == 0 and self.want_logp:
                st.logp = logp[i].to("cpu").clone()

    def take(self, rows: list[int]) -> dict[int, _RowStats]:
        return {r: self.stats.pop(r, _RowStats()) for r in rows}


def _child(layer: nn.Module, names: tuple[str, ...]) -> nn.Module:
    for name in names:
        sub = getattr(layer, name, None)
        if isinstance(sub, nn.Module):
            return sub
    raise RuntimeError(f"steerlab: {type(layer).__name__} has none of {', '.join(names)}")


def decoder_layers(model: nn.Module, n_layers: int) -> nn.ModuleList:
    """The decoder-layer list of a vLLM model: the module list of ``n_layers`` blocks."""
    for _, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == n_layers:
            return mod
    raise RuntimeError(f"steerlab: found no list of {n_layers} decoder layers in the model")


def points_of(layer: nn.Module) -> list[str]:
    """The site points this vLLM decoder layer exposes to the hooks above."""
    points = ["resid_pre", "resid_post"]
    if any(isinstance(getattr(layer, n, None), nn.Module) for n in ("self_attn", "attn")):
        points.append("attn_out")
    if any(isinstance(getattr(layer, n, None), nn.Module) for n in ("mlp", "feed_forward")):
        points.append("mlp_out")
    params = inspect.signature(layer.forward).parameters
    if "residual" in params and isinstance(
        getattr(layer, "post_attention_layernorm", None), nn.Module
    ):
        points.append("resid_mid")
    return [p for p in POINTS if p in points]


class SteeringExtension:
    """Mixed into vLLM's worker (``worker_extension_cls``); see the module doc. Every method is
    called on every rank by ``collective_rpc``; arguments and results are plain values."""

    model_runner: Any
    _steerlab_call: _Call | None = None

    def _steerlab_parts(self) -> tuple[Any, nn.ModuleList]:
        runner = self.model_runner
        missing = [a for a in _RUNNER_NEEDS if not hasattr(runner, a)]
        if missing:
            raise RuntimeError(
                f"steerlab cannot steer {type(runner).__name__} (it has no "
                f"{', '.join(missing)}): use vLLM's V1 model runner (VLLM_USE_V2_MODEL_RUNNER=0)"
            )
        model = runner.get_model()
        n_layers = int(runner.model_config.hf_config.num_hidden_layers)
        return runner, decoder_layers(model, n_layers)

    def steerlab_describe(self) -> dict[str, Any]:
        """Layers, width and site points of the model, and the runner's name."""
        runner, layers = self._steerlab_parts()
        cfg = runner.model_config.hf_config
        return {
            "n_layers": len(layers),
            "d_model": int(cfg.hidden_size),
            "points": points_of(layers[0]),
            "runner": type(runner).__name__,
            "model_type": str(getattr(cfg, "model_type", "")),
        }

    def steerlab_begin(
        self, call: str, plan: bytes, want_logp: bool, read: bytes | None = None
    ) -> None:
        """Start steering ``call``'s requests with the pickled ``(plan, remap)`` (see the module
        doc and :func:`steerlab.engine.vllm_runner.compact`).
        ``read``: pickled ``(sites, {row: {absolute position: weight}})`` to record."""
        self.steerlab_end(None)
        runner, layers = self._steerlab_parts()
        compiled, remap = pickle.loads(plan)
        if not isinstance(compiled, SteeringPlan):
            raise RuntimeError("steerlab: the plan did not arrive")
        dev = runner.device
        remap = {k: [t.to(dev) for t in v] for k, v in remap.items()}
        state = _Call(runner, layers, call, compiled.to(dev), remap)
        state.want_logp = want_logp
        if read is not None:
            sites, weights = pickle.loads(read)
            state.read, state.read_weights = tuple(sites), dict(weights)
        state.install()
        self._steerlab_call = state

    def steerlab_recorded(self, call: str) -> bytes:
        """The recorded sums, pickled: ``({layer: (rows, d)}, {layer: (rows,)})`` on the CPU."""
        state = self._steerlab_call
        if state is None or state.call != call:
            return pickle.dumps(({}, {}))
        acts = {k: v.cpu() for k, v in state.acts.items()}
        return pickle.dumps((acts, {k: v.cpu() for k, v in state.norms.items()}))

    def steerlab_take(self, call: str, rows: list[int]) -> bytes:
        """Hand over (and forget) the sampled-token statistics of ``rows``, pickled."""
        state = self._steerlab_call
        if state is None or state.call != call:
            return pickle.dumps({})
        return pickle.dumps(state.take(rows))

    def steerlab_end(self, call: str | None) -> None:
        """Remove every hook and wrapper (``call`` None: whatever is active)."""
        state = self._steerlab_call
        if state is not None and (call is None or state.call == call):
            state.remove()
            self._steerlab_call = None

    def steerlab_hooks(self) -> int:
        """Forward (pre-)hooks left on the model and the sampler (tests: none after a call)."""
        runner, _ = self._steerlab_parts()
        total = 0
        for root in (runner.get_model(), runner.sampler):
            for m in root.modules():
                total += len(m._forward_hooks) + len(m._forward_pre_hooks)
        return total + int("_model_forward" in vars(runner))
