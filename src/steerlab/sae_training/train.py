"""Train a sparse autoencoder on one site of a model, offline, and save it in sae-lens format.

The pipeline (each step cached, each long step with a progress bar):

1. **corpus** (:mod:`steerlab.sae_training.corpus`): shipped prompts, the model's own answers,
   shipped code and the Python standard library, split into training and held-out documents;
2. **activations**: the training documents run through the model up to the site (the forward pass
   stops there); activations stream into a bfloat16 file on disk (bounded memory), cached under
   ``$STEERLAB_CACHE/sae/activations/`` by model, site and corpus, so changing only SAE
   hyperparameters does not rerun the model;
3. **training**: Adam on shuffled activations; decoder rows kept at unit norm (the gradient's
   radial part removed before each step, rows renormalised after); ``b_dec`` starts at the
   geometric median of a sample, ``W_enc`` at ``W_decᵀ``. TopK: the ``k`` largest pre-activations
   (ReLU'd) are kept, plus the auxiliary loss that lets dead features (no activation in the last
   ``dead_tokens`` tokens) reconstruct the residual error. ReLU: L1 penalty on the activations,
   warmed up over the first 5% of steps;
4. **evaluation** on the held-out documents: explained variance, L0, dead-feature fraction, and the
   next-token cross-entropy clean, with the reconstruction spliced in at the site, and with the
   site zero-ablated.

Activations are used as they are: **no normalisation** (``normalize_activations: "none"`` in
``cfg.json``), so sae-lens, steerlab and the trainer apply the same map to the raw residual. The
losses are divided by constants measured once (``loss_scale``: the activations' total variance)
only to make the learning rate and ``l1`` independent of the site's scale; that changes no weight
semantics. Attention sinks are left out of training and of the metrics, and left as they are when
the reconstruction is spliced in: the first token of every sequence, and any token whose norm
exceeds ``outlier_factor`` times the median norm (``outlier_norm`` in ``cfg.json``'s metadata).
At SmolLM2-135M's layer 15 those are ~0.02% of tokens with norms of 1,000-26,000 against a median
of ~180 (a window's second or third token when its first is weak); kept, they held a sixth of the
squared error and made early training spike.

The result directory (``cfg.json`` + ``sae_weights.safetensors`` exactly as sae-lens 6 writes
them, ``metrics.json``, ``training.json``) is cached under ``$STEERLAB_CACHE/sae/`` by a key over
the model (name and a weight fingerprint), the site, every hyperparameter and the corpus hash.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from steerlab.backends.base import SiteFn
from steerlab.engine.batch import left_pad
from steerlab.engine.forward import local_backend, steered_forward
from steerlab.errors import SteerlabError
from steerlab.models import Model, cache_dir
from steerlab.sae_training.corpus import Corpus, CorpusConfig, Document, build_corpus, corpus_hash
from steerlab.sites import Site, parse_site

logger = logging.getLogger(__name__)

#: ``--architecture`` values -> sae-lens architecture names
ARCHITECTURES = {"topk": "topk", "relu": "standard"}
#: bump when the trainer's output for the same settings changes (invalidates the cache)
FORMAT_VERSION = 1
CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
METRICS_FILE = "metrics.json"
TRAINING_FILE = "training.json"
METRIC_KEYS = (
    "explained_variance",
    "fvu",
    "mse",
    "l0",
    "dead_fraction",
    "ce_clean",
    "ce_reconstruction",
    "ce_zero_ablation",
    "ce_delta",
    "ce_loss_recovered",
    "eval_tokens",
    "ce_tokens",
    "outlier_tokens",
)


@dataclass(frozen=True)
class SAETrainConfig:
    """Every setting that changes the trained SAE (all part of the cache key).

    ``width``: features (None: ``expansion * d_model``); ``k``: active features per token
    (topk); ``l1``: sparsity coefficient (relu; the penalty is ``l1 * Σ acts / sqrt(loss_scale)``
    so it does not depend on the site's scale); ``tokens``: training activations collected;
    ``eval_tokens``: held-out activations for the metrics; ``epochs``: passes over the training
    activations; ``aux_coef``: weight of the TopK dead-feature loss (0 turns it off);
    ``dead_tokens``: a feature silent for this many training tokens counts as dead for it;
    ``outlier_factor``: tokens with a norm above this many times the median are left out.
    """

    architecture: str = "topk"
    width: int | None = None
    expansion: int = 8
    k: int = 32
    l1: float = 0.01
    tokens: int = 300_000
    eval_tokens: int = 8_192
    epochs: int = 3
    batch_size: int = 512
    lr: float = 1e-3
    aux_coef: float = 1 / 32
    dead_tokens: int = 100_000
    outlier_factor: float = 10.0
    seed: int = 0
    corpus: CorpusConfig = field(default_factory=CorpusConfig)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise SteerlabError(
                f"unknown SAE architecture {self.architecture!r}: use {' or '.join(ARCHITECTURES)}"
            )
        positive = {
            "width": self.width if self.width is not None else 1,
            "expansion": self.expansion,
            "k": self.k,
            "tokens": self.tokens,
            "eval_tokens": self.eval_tokens,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "dead_tokens": self.dead_tokens,
        }
        for name, value in positive.items():
            if value < 1:
                raise SteerlabError(f"{name} must be at least 1, got {value}")
        if self.batch_size > self.tokens:
            raise SteerlabError(
                f"batch_size ({self.batch_size}) is more than the training tokens "
                f"({self.tokens}): not one training step; collect more tokens or use smaller "
                "batches"
            )
        if self.architecture == "topk" and self.width is not None and self.k > self.width:
            raise SteerlabError(f"k ({self.k}) cannot exceed the SAE width ({self.width})")
        if not self.outlier_factor > 1:
            raise SteerlabError(f"outlier_factor must be > 1, got {self.outlier_factor}")
        for name, x in (("l1", self.l1), ("lr", self.lr), ("aux_coef", self.aux_coef)):
            if not math.isfinite(x) or x < 0 or (name == "lr" and x == 0):
                raise SteerlabError(f"{name} must be a finite number >= 0 (lr > 0), got {x}")

    def d_sae(self, d_model: int) -> int:
        width = self.width if self.width is not None else self.expansion * d_model
        if self.architecture == "topk" and self.k > width:
            raise SteerlabError(f"k ({self.k}) cannot exceed the SAE width ({width})")
        return width


# ----------------------------------------------------------------------------- the SAE


class TrainingSAE(nn.Module):
    """The SAE being trained: sae-lens's algebra (``apply_b_dec_to_input``, no rescaling)::

    pre  = (x - b_dec) @ W_enc + b_enc        # (N, d_sae)
    acts = relu(pre) on the k largest of pre  # topk
         = relu(pre)                          # relu ("standard" in sae-lens)
    x̂    = acts @ W_dec + b_dec               # (N, d_in)
    """

    def __init__(self, d_in: int, d_sae: int, architecture: str, k: int | None = None) -> None:
        super().__init__()
        self.architecture = architecture
        self.k = k
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in))
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    @property
    def d_in(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.W_enc.shape[1])

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.b_dec) @ self.W_enc + self.b_enc  # (N, d_sae)

    def pre_for_training(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`pre` with ``b_dec`` folded into the bias (N, d_sae): the same map, but its
        backward pass needs one (N, d_in, d_sae) product instead of two (``x`` needs no grad)."""
        return torch.addmm(self.b_enc - self.b_dec @ self.W_enc, x, self.W_enc)

    def sparse(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """TopK: ``(values, indices)`` (N, k) of the active features (values ReLU'd)."""
        vals, idx = pre.topk(int(self.k or 0), dim=-1, sorted=False)
        return vals.relu(), idx

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations (N, d_sae), dense."""
        pre = self.pre(x)
        if self.architecture == "topk":
            vals, idx = self.sparse(pre)
            return torch.zeros_like(pre).scatter_(-1, idx, vals)
        return pre.relu()

    def decode(self, acts: torch.Tensor) -> torch.Tensor:
        return acts @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction ``x̂`` of ``x`` (..., d_in)."""
        shape = x.shape
        flat = x.reshape(-1, shape[-1]).to(self.W_enc.dtype)
        if self.architecture == "topk":
            vals, idx = self.sparse(self.pre(flat))
            out = F.embedding_bag(idx, self.W_dec, per_sample_weights=vals, mode="sum") + self.b_dec
        else:
            out = self.decode(self.encode(flat))
        return out.reshape(shape).to(x.dtype)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def remove_radial_grad(self) -> None:
        """Drop the part of ``W_dec``'s gradient along each (unit) row: with rows renormalised
        after the step it would only change their norm."""
        if self.W_dec.grad is not None:
            w, g = self.W_dec, self.W_dec.grad
            g.sub_((g * w).sum(-1, keepdim=True) * w)

    def state(self) -> dict[str, torch.Tensor]:
        """The weights under sae-lens's names (float32, CPU, contiguous)."""
        return {
            name: getattr(self, name).detach().float().cpu().contiguous()
            for name in ("W_enc", "b_enc", "W_dec", "b_dec")
        }

    @classmethod
    def from_dir(cls, path: str | os.PathLike[str]) -> TrainingSAE:
        """Read an SAE this trainer saved (``cfg.json`` + ``sae_weights.safetensors``)."""
        path = Path(path)
        cfg = json.loads((path / CFG_FILE).read_text(encoding="utf-8"))
        weights = load_file(str(path / WEIGHTS_FILE))
        arch = next(a for a, sl in ARCHITECTURES.items() if sl == cfg["architecture"])
        sae = cls(int(cfg["d_in"]), int(cfg["d_sae"]), arch, cfg.get("k"))
        sae.load_state_dict(weights)
        return sae


def geometric_median(x: torch.Tensor, iters: int = 30) -> torch.Tensor:
    """Weiszfeld's iterations from the mean; ``x`` (N, d) -> (d,)."""
    y = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - y).norm(dim=-1).clamp_min(1e-6)
        y = (w[:, None] * x).sum(0) / w.sum()
    return y


# ----------------------------------------------------------------------------- activations


class ActivationStore:
    """Activations (N, d) as bfloat16 bits in one flat file (``acts.bin``), memory-mapped.

    bfloat16 keeps float32's range (residual streams carry outliers in the thousands) at half the
    disk; its rounding (relative 2⁻⁹) is far below what an SAE reconstructs. ``heldout.json``
    keeps the held-out documents, so evaluation needs no corpus rebuild.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        self.n = int(self.meta["n"])
        self.d = int(self.meta["d"])
        self._mm = np.memmap(path / "acts.bin", dtype=np.int16, mode="r", shape=(self.n, self.d))

    def rows(self, idx: np.ndarray) -> torch.Tensor:
        """Rows ``idx`` as float32 (len(idx), d)."""
        bits = torch.from_numpy(np.ascontiguousarray(self._mm[np.sort(idx)]))
        return bits.view(torch.bfloat16).float()

    def heldout(self) -> list[Document]:
        rows = json.loads((self.path / "heldout.json").read_text(encoding="utf-8"))
        return [Document(r["source"], tuple(r["ids"]), int(r["skip"])) for r in rows]


def _batches(docs: Sequence[Document], max_tokens: int) -> Iterator[list[Document]]:
    """Documents grouped by similar length, at most ``max_tokens`` padded tokens a batch."""
    order = sorted(docs, key=lambda d: len(d.ids))
    batch: list[Document] = []
    for d in order:
        if batch and (len(batch) + 1) * len(d.ids) > max_tokens:
            yield batch
            batch = []
        batch.append(d)
    if batch:
        yield batch


def _used(docs: Sequence[Document], width: int) -> torch.Tensor:
    """(B, W) True at the tokens whose activations count (after each document's ``skip``)."""
    used = torch.zeros((len(docs), width), dtype=torch.bool)
    for r, d in enumerate(docs):
        used[r, width - len(d.ids) + d.skip :] = True
    return used


def _grab(sink: list[torch.Tensor]) -> SiteFn:
    def fn(h: torch.Tensor) -> torch.Tensor:
        sink.append(h)  # (B, W, d)
        return h

    return fn


def collect(
    model: Model,
    site: Site,
    docs: Sequence[Document],
    path: Path,
    batch_tokens: int = 2048,
    progress: bool = True,
) -> int:
    """Run ``docs`` through ``model`` up to ``site`` and write the activations of their used
    tokens to ``path/acts.bin`` (bfloat16 bits, row-major (N, d_model)); returns N."""
    n = sum(d.n_train for d in docs)
    path.mkdir(parents=True, exist_ok=True)
    mm = np.memmap(path / "acts.bin", dtype=np.int16, mode="w+", shape=(n, model.d_model))
    cursor = 0
    backend = local_backend(model)
    bar = tqdm(total=n, desc="activations", unit="tok", disable=not progress)
    with torch.inference_mode():
        for batch in _batches(docs, batch_tokens):
            ids, mask = left_pad([d.ids for d in batch], model.pad_token_id, model.device)
            sink: list[torch.Tensor] = []
            steered_forward(backend, ids, mask, record={site: [_grab(sink)]}, stop_at=site)
            h = sink[-1][_used(batch, ids.shape[1]).to(model.device)]  # (n_used, d)
            mm[cursor : cursor + len(h)] = h.to(torch.bfloat16).view(torch.int16).cpu().numpy()
            cursor += len(h)
            bar.update(len(h))
    bar.close()
    mm.flush()
    del mm
    return n


# ----------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainStats:
    """What training produced besides the weights. ``history``: ``(step, fvu)`` pairs (the
    batch's reconstruction loss, a fraction of variance unexplained) logged through training."""

    steps: int
    loss_scale: float
    outlier_norm: float
    outlier_fraction: float
    history: tuple[tuple[int, float], ...]
    dead_at_end: float


def _lr_at(step: int, total: int, lr: float) -> float:
    """Linear warm-up (2% of steps), constant, linear decay to 0 over the last 20%."""
    warm = max(1, total // 50)
    decay_from = int(total * 0.8)
    if step < warm:
        return lr * (step + 1) / warm
    if step >= decay_from:
        return lr * max(total - step, 1) / max(total - decay_from, 1)
    return lr


def _adam(params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """Adam, fused where this torch has it (4x faster steps on CPU)."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError):  # older torch: no fused CPU kernel
        return torch.optim.Adam(params, lr=lr)


def train(
    store: ActivationStore, config: SAETrainConfig, device: torch.device, progress: bool = True
) -> tuple[TrainingSAE, TrainStats]:
    """Train an SAE on every activation in ``store``, ``config.epochs`` times, shuffled."""
    d_sae = config.d_sae(store.d)
    topk = config.architecture == "topk"
    gen = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    sae = TrainingSAE(store.d, d_sae, config.architecture, config.k if topk else None)
    with torch.no_grad():
        sample = store.rows(rng.choice(store.n, size=min(store.n, 8192), replace=False))
        outlier_norm = config.outlier_factor * float(sample.norm(dim=-1).median())
        sample = sample[sample.norm(dim=-1) <= outlier_norm]
        sae.W_dec.copy_(torch.randn(d_sae, store.d, generator=gen))
        sae.normalize_decoder()
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_dec.copy_(geometric_median(sample))
        loss_scale = float((sample - sample.mean(0)).pow(2).sum(-1).mean())
    sae.to(device)
    opt = _adam(list(sae.parameters()), config.lr)
    per_epoch = max(store.n // config.batch_size, 1)
    total = per_epoch * config.epochs
    dead_steps = max(1, math.ceil(config.dead_tokens / config.batch_size))
    since_fired = torch.zeros(d_sae, dtype=torch.long, device=device)
    k_aux = store.d // 2
    history: list[tuple[int, float]] = []
    log_every = max(1, total // 100)
    bar = tqdm(total=total, desc="train SAE", unit="step", disable=not progress)
    step = n_outliers = 0
    for epoch in range(config.epochs):
        perm = rng.permutation(store.n)
        for b in range(per_epoch):
            x = store.rows(perm[b * config.batch_size : (b + 1) * config.batch_size]).to(device)
            keep = x.norm(dim=-1) <= outlier_norm
            n_outliers += int((~keep).sum()) if epoch == 0 else 0
            x = x[keep]  # (B', d) attention sinks left out
            pre = sae.pre_for_training(x)  # (B', d_sae)
            if topk:
                vals, idx = sae.sparse(pre)
                x_hat = (
                    F.embedding_bag(idx, sae.W_dec, per_sample_weights=vals, mode="sum") + sae.b_dec
                )
                fired = torch.zeros(d_sae, dtype=torch.bool, device=device)
                fired[idx[vals > 0]] = True
            else:
                acts = pre.relu()
                x_hat = acts @ sae.W_dec + sae.b_dec
                fired = (acts > 0).any(0)
            fvu = (x - x_hat).pow(2).sum(-1).mean() / loss_scale
            loss = fvu
            since_fired = torch.where(fired, 0, since_fired + 1)
            if topk and config.aux_coef > 0:
                dead = since_fired >= dead_steps
                n_dead = int(dead.sum())
                if n_dead > 0:
                    # dead features reconstruct what the live ones missed (the error, detached)
                    err = (x - x_hat).detach()
                    aux_vals, aux_idx = pre.masked_fill(~dead, -math.inf).topk(
                        min(k_aux, n_dead), dim=-1, sorted=False
                    )
                    err_hat = F.embedding_bag(
                        aux_idx, sae.W_dec, per_sample_weights=aux_vals.relu(), mode="sum"
                    )
                    aux = (err - err_hat).pow(2).sum(-1).mean() / loss_scale
                    loss = loss + config.aux_coef * aux
            elif not topk:
                warm = min(1.0, (step + 1) / max(1, total // 20))
                loss = loss + warm * config.l1 * acts.sum(-1).mean() / math.sqrt(loss_scale)
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, total, config.lr)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            sae.remove_radial_grad()
            opt.step()
            sae.normalize_decoder()
            if step % log_every == 0 or step == total - 1:
                history.append((step, fvu.item()))
                bar.set_postfix(
                    fvu=f"{fvu.item():.3f}",
                    dead=f"{float((since_fired >= dead_steps).float().mean()):.2f}",
                )
            step += 1
            bar.update(1)
    bar.close()
    sae.eval()
    dead_end = float((since_fired >= dead_steps).float().mean())
    seen = min(per_epoch * config.batch_size, store.n)
    return sae, TrainStats(
        total, loss_scale, outlier_norm, n_outliers / seen, tuple(history), dead_end
    )


# ----------------------------------------------------------------------------- evaluation


def _all_logits(
    model: Model, ids: torch.Tensor, mask: torch.Tensor, edits: dict[Site, list[SiteFn]]
) -> torch.Tensor:
    """Logits at every position (B, W, V) float32, with ``edits`` applied."""
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with model.backend.attach(edits, lambda _info: None):
        out = model.hf(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
    return out.logits.float()


def _ce_sum(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> tuple[float, int]:
    """Summed next-token cross-entropy over positions whose target is a real token."""
    valid = (mask[:, :-1] * mask[:, 1:]).bool()  # (B, W-1)
    ce = F.cross_entropy(logits[:, :-1][valid], ids[:, 1:][valid], reduction="sum")
    return float(ce), int(valid.sum())


@torch.inference_mode()
def evaluate(
    model: Model,
    site: Site,
    sae: TrainingSAE,
    docs: Sequence[Document],
    outlier_norm: float = math.inf,
    batch_tokens: int = 1024,
    progress: bool = True,
) -> dict[str, float]:
    """Held-out metrics (see :data:`METRIC_KEYS`).

    Activation metrics use each document's counted tokens (after ``skip``) but those with a norm
    above ``outlier_norm``; the cross-entropy splices the SAE's reconstruction (or zeros) into the
    site at every token but the first and those outliers, and averages over every predicted real
    token.
    """
    dev = model.device
    sae_dtype = sae.W_enc.dtype
    n = n_outliers = 0
    sum_x = torch.zeros(sae.d_in, dtype=torch.float64)
    sum_sq = err_sq = l0 = 0.0
    fired = torch.zeros(sae.d_sae, dtype=torch.bool)
    ce = {"clean": 0.0, "recon": 0.0, "zero": 0.0}
    n_ce = 0
    bar = tqdm(total=len(docs), desc="evaluate SAE", unit="doc", disable=not progress)
    for batch in _batches(docs, batch_tokens):
        ids, mask = left_pad([d.ids for d in batch], model.pad_token_id, dev)  # (B, W)
        used = _used(batch, ids.shape[1]).to(dev)
        after_first = (mask.cumsum(-1) > 1)[..., None]  # (B, W, 1) real tokens after the first
        sink: list[torch.Tensor] = []

        def spliced(h: torch.Tensor, first: torch.Tensor = after_first) -> torch.Tensor:
            return first & (h.norm(dim=-1, keepdim=True) <= outlier_norm)  # (B, W, 1)

        def recon(h: torch.Tensor) -> torch.Tensor:
            return torch.where(spliced(h), sae(h.to(sae_dtype)).to(h.dtype), h)

        def zero(h: torch.Tensor) -> torch.Tensor:
            return torch.where(spliced(h), torch.zeros_like(h), h)

        for name, fn in (("clean", _grab(sink)), ("recon", recon), ("zero", zero)):
            total, count = _ce_sum(_all_logits(model, ids, mask, {site: [fn]}), ids, mask)
            ce[name] += total
        n_ce += count  # the same positions in all three passes
        x = sink[-1][used].to(sae_dtype)  # (n_used, d)
        inlier = x.norm(dim=-1) <= outlier_norm
        n_outliers += int((~inlier).sum())
        x = x[inlier]
        acts = sae.encode(x)
        x_hat = sae.decode(acts)
        n += len(x)
        sum_x += x.double().sum(0).cpu()
        sum_sq += float(x.double().pow(2).sum())
        err_sq += float((x - x_hat).double().pow(2).sum())
        l0 += float((acts > 0).sum())
        fired |= (acts > 0).any(0).cpu()
        bar.update(len(batch))
    bar.close()
    if n == 0 or n_ce == 0:
        raise SteerlabError("no held-out tokens to evaluate the SAE on")
    total_var = sum_sq - float(sum_x.pow(2).sum()) / n
    fvu = err_sq / total_var
    clean, rec, zer = (ce[k] / n_ce for k in ("clean", "recon", "zero"))
    return {
        "explained_variance": 1.0 - fvu,
        "fvu": fvu,
        "mse": err_sq / n / sae.d_in,
        "l0": l0 / n,
        "dead_fraction": float((~fired).float().mean()),
        "ce_clean": clean,
        "ce_reconstruction": rec,
        "ce_zero_ablation": zer,
        "ce_delta": rec - clean,
        "ce_loss_recovered": (zer - rec) / (zer - clean) if zer != clean else float("nan"),
        "eval_tokens": n,
        "ce_tokens": n_ce,
        "outlier_tokens": n_outliers,
    }


# ----------------------------------------------------------------------------- saving


def _sae_lens_version() -> str:
    """The installed sae-lens version (a 6.x version marks the 6.x config format), else 6.0.0."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sae-lens")
    except PackageNotFoundError:
        return "6.0.0"


def sae_lens_config(
    sae: TrainingSAE, model: Model, site: Site, config: SAETrainConfig, extra: dict[str, Any]
) -> dict[str, Any]:
    """``cfg.json`` as sae-lens 6 writes it for a ``topk`` / ``standard`` SAE."""
    cfg: dict[str, Any] = {
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": _sae_lens_version(),
            "sae_lens_training_version": None,
            "model_name": model.name,
            "hook_name": site.name,
            "hook_head_index": None,
            "context_size": config.corpus.context,
            "prepend_bos": False,
            "exclude_special_tokens": False,
            "dataset_path": "steerlab offline corpus (shipped prompts, generations, code, stdlib)",
            "trained_by": "steerlab sae-train",
            "activation_scaling": "none",
            **extra,
        },
    }
    if sae.architecture == "topk":
        cfg["k"] = sae.k
        cfg["rescale_acts_by_decoder_norm"] = False
    cfg["architecture"] = ARCHITECTURES[sae.architecture]
    return cfg


def save_sae(sae: TrainingSAE, path: Path, cfg: dict[str, Any]) -> None:
    """Write ``cfg.json`` and ``sae_weights.safetensors`` into ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    save_file(sae.state(), str(path / WEIGHTS_FILE))
    _write_json(path / CFG_FILE, cfg)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, allow_nan=True) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------- the job


@dataclass(frozen=True)
class TrainResult:
    """A trained (or cached) SAE.

    ``path``: its directory in the cache; ``out``: the copy in the directory the caller asked
    for (None when not asked); ``cached``: True when it was found in the cache and nothing ran;
    ``sae``: the SAE in memory; ``metrics``: :data:`METRIC_KEYS`; ``training``: the
    ``training.json`` record (settings, corpus counts, timings, loss history).
    """

    path: Path
    out: Path | None
    cached: bool
    key: str
    sae: TrainingSAE
    metrics: dict[str, float]
    training: dict[str, Any]


def sae_root() -> Path:
    return cache_dir() / "sae"


def model_fingerprint(model: Model) -> str:
    """A cheap fingerprint of the weights: every parameter's name, shape and first values."""
    h = hashlib.sha256(model.name.encode())
    module = model.hf if model.hf is not None else model.backend.wrapped
    if isinstance(module, nn.Module):
        with torch.no_grad():
            for name, p in sorted(module.named_parameters(), key=lambda t: t[0]):
                h.update(f"{name}{tuple(p.shape)}".encode())
                h.update(p.detach().reshape(-1)[:4096].float().cpu().numpy().tobytes())
    return h.hexdigest()


def _key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


@contextlib.contextmanager
def _atomic_dir(target: Path) -> Iterator[Path]:
    """A temp directory beside ``target`` that becomes ``target`` when the block succeeds
    (another process that got there first wins; ours is dropped)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        yield tmp
        try:
            os.replace(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


OUT_FILES = (CFG_FILE, WEIGHTS_FILE, METRICS_FILE, TRAINING_FILE)


def check_out(out: Path) -> None:
    """Refuse an ``--out`` that is a file, or a folder holding files other than an SAE's (a
    previous SAE is replaced; someone else's files are never written among)."""
    if out.exists() and not out.is_dir():
        raise SteerlabError(f"--out {out} exists and is not a directory")
    if out.is_dir():
        others = sorted(p.name for p in out.iterdir() if p.name not in OUT_FILES)
        if others:
            raise SteerlabError(
                f"--out {out} holds other files ({', '.join(others[:3])}"
                f"{', ...' if len(others) > 3 else ''}): give an empty or new folder"
            )


def _copy_out(src: Path, out: Path) -> Path:
    if out.resolve() == src.resolve():
        return out
    check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in OUT_FILES:
        shutil.copyfile(src / name, out / name)
    return out


def train_sae(
    model: Model,
    site: str | Site,
    config: SAETrainConfig | None = None,
    out: Path | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train (or fetch from the cache) an SAE on ``site`` of ``model``; see the module docstring.

    ``site``: ``blocks.L.hook_POINT`` or a :class:`~steerlab.sites.Site`. ``out``: also copy the
    result there. Needs the Hugging Face backend (the cross-entropy metrics read every position's
    logits).
    """
    cfg = config or SAETrainConfig()
    where = parse_site(site) if isinstance(site, str) else site
    model.backend.check_site(where)
    if model.backend.name != "hf" or model.hf is None:
        raise SteerlabError("SAE training needs a model on the hf backend")
    d_sae = cfg.d_sae(model.d_model)
    chash = corpus_hash(cfg.corpus)
    fingerprint = model_fingerprint(model)
    acts_key = _key(
        {
            "format": FORMAT_VERSION,
            "model": fingerprint,
            "dtype": str(model.dtype),
            "site": where.name,
            "corpus": chash,
            "tokens": cfg.tokens,
            "eval_tokens": cfg.eval_tokens,
        }
    )
    settings = {**asdict(cfg), "width": d_sae}
    key = _key({"activations": acts_key, "settings": settings})
    path = sae_root() / _slug(model.name) / where.name / key[:16]
    if (path / METRICS_FILE).is_file() and (path / TRAINING_FILE).is_file():
        logger.info("reusing the SAE cached at %s", path)
        training = json.loads((path / TRAINING_FILE).read_text(encoding="utf-8"))
        metrics = json.loads((path / METRICS_FILE).read_text(encoding="utf-8"))
        sae = TrainingSAE.from_dir(path)
        copied = _copy_out(path, out) if out is not None else None
        return TrainResult(path, copied, True, key, sae, metrics, training)

    timings: dict[str, float] = {}
    acts_path = sae_root() / "activations" / acts_key[:16]
    t0 = time.perf_counter()
    if (acts_path / "meta.json").is_file():
        logger.info("reusing activations cached at %s", acts_path)
        store = ActivationStore(acts_path)
    else:
        corpus = build_corpus(model, cfg.tokens, cfg.eval_tokens, cfg.corpus, progress)
        timings["corpus_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        store = _collect_store(model, where, corpus, acts_path, fingerprint, chash, progress)
        timings["activations_s"] = time.perf_counter() - t0
    logger.info("activations: %d x %d at %s", store.n, store.d, store.path)
    t0 = time.perf_counter()
    sae, stats = train(store, cfg, model.device, progress)
    timings["train_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics = evaluate(model, where, sae, store.heldout(), stats.outlier_norm, progress=progress)
    timings["evaluate_s"] = time.perf_counter() - t0
    training = {
        "key": key,
        "model": model.name,
        "model_fingerprint": fingerprint,
        "site": where.name,
        "settings": settings,
        "corpus_hash": chash,
        "corpus": store.meta.get("counts", {}),
        "activations": str(store.path),
        "train_tokens": store.n,
        "steps": stats.steps,
        "loss_scale": stats.loss_scale,
        "outlier_norm": stats.outlier_norm,
        "outlier_fraction": stats.outlier_fraction,
        "dead_fraction_in_training": stats.dead_at_end,
        "history": [list(h) for h in stats.history],
        "timings_s": timings,
    }
    extra = {
        "loss_scale": stats.loss_scale,
        "outlier_norm": stats.outlier_norm,
        "excluded_tokens": "the first of each sequence, and those with a norm > outlier_norm",
        "steerlab_key": key,
        "train_tokens": store.n,
    }
    with _atomic_dir(path) as tmp:
        save_sae(sae, tmp, sae_lens_config(sae, model, where, cfg, extra))
        _write_json(tmp / METRICS_FILE, metrics)
        _write_json(tmp / TRAINING_FILE, training)
    copied = _copy_out(path, out) if out is not None else None
    return TrainResult(path, copied, False, key, sae, metrics, training)


def _collect_store(
    model: Model,
    site: Site,
    corpus: Corpus,
    path: Path,
    fingerprint: str,
    chash: str,
    progress: bool,
) -> ActivationStore:
    with _atomic_dir(path) as tmp:
        n = collect(model, site, corpus.train, tmp, progress=progress)
        meta = {
            "n": n,
            "d": model.d_model,
            "dtype": "bfloat16",
            "model": model.name,
            "model_fingerprint": fingerprint,
            "site": site.name,
            "corpus_hash": chash,
            "counts": corpus.counts(),
        }
        held = [{"source": d.source, "ids": list(d.ids), "skip": d.skip} for d in corpus.heldout]
        (tmp / "heldout.json").write_text(json.dumps(held), encoding="utf-8")
        _write_json(tmp / "meta.json", meta)
    return ActivationStore(path)
