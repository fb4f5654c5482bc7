"""SAE feature discovery: which features separate prompts whose code passed from those that failed.

Three steps, each usable on its own:

1. :func:`encode_prompts` runs the prompts through the model up to the SAE's site (the forward
   pass stops there), in batches, and encodes each batch with the SAE at once, keeping only one
   row of feature activations per prompt ``(N, d_sae)``: at the last prompt token (``last``) or
   averaged over the prompt's tokens except the first (``mean``; the first token is an attention
   sink with a huge norm, and SAEs are trained without it). Memory is bounded by the batch.
2. :func:`feature_scores` compares the two classes feature by feature: mean activations and their
   difference, AUROC of the activation predicting *pass* (Mann–Whitney, ties count half), firing
   fractions, counts, and a two-sided permutation p-value of the mean difference.
3. :meth:`FeatureScores.top` ranks them; :func:`write_results` saves the table, the top features
   and the decoder rows of the best ones as vector files.

**Ranking.** A feature is *correct-preferring* when AUROC > 0.5 and mean(pass) > mean(fail), and
*incorrect-preferring* when AUROC < 0.5 and mean(pass) < mean(fail); a feature whose AUROC and
mean difference disagree (rare: a few large activations on one side) is in neither list. Each
list is ordered by AUROC's distance from 0.5 (scale-free, so features of different activation
scales compare fairly), ties by the size of the mean difference, then by index. Dead features
(never active on any prompt of either class) are left out of scoring and ranking.

**Multiple comparisons.** Every live feature is tested, so among thousands some separate the
classes by chance; :attr:`FeatureScores.n_tested` says how many were tested and
:attr:`FeatureScores.p_bonferroni` adjusts for it. A permutation p-value is at least
``1 / (1 + n_perm)``: Bonferroni at level ``a`` over ``m`` features needs ``n_perm >= m / a``
permutations before anything can pass. Treat the ranking as candidates to steer with (and
measure), not as findings.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from tqdm.auto import tqdm

from steerlab.engine.batch import left_pad
from steerlab.engine.forward import local_backend, steered_forward
from steerlab.errors import SteerlabError
from steerlab.sae.model import SparseAutoencoder

if TYPE_CHECKING:
    from steerlab.models import Model
    from steerlab.vectors import SteeringVector

logger = logging.getLogger(__name__)

POSITIONS = ("last", "mean")
Direction = Literal["correct", "incorrect"]
DIRECTIONS: tuple[Direction, ...] = ("correct", "incorrect")
RANKING = (
    "correct-preferring: AUROC > 0.5 and mean_pass > mean_fail, by AUROC descending; "
    "incorrect-preferring: AUROC < 0.5 and mean_pass < mean_fail, by AUROC ascending; "
    "ties by |diff| descending, then feature index; dead features excluded"
)
FEATURES_CSV = "features.csv"
TOP_JSON = "top_features.json"

# elements per intermediate block (feature-chunked AUROC, token-chunked encoding)
_MAX_BLOCK = 1 << 22
# permutations per block of the permutation test (fixed, so a seed gives the same draws however
# many features there are)
_PERM_CHUNK = 64
# two mean differences this close (relative) are equal: sums of the same values in another order
# differ in the last bits, and the observed labelling must count as "at least as extreme"
_REL_TOL = 1e-9

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


# ----------------------------------------------------------------------------- statistics


def auroc(acts_pass: torch.Tensor, acts_fail: torch.Tensor) -> torch.Tensor:
    """Per feature, P(pass activation > fail activation) + ½ P(equal) ``(d,)`` float64.

    The Mann–Whitney U of the pass class divided by ``n_pass · n_fail``, with ties counted half
    (so an all-zero feature scores 0.5). ``acts_pass`` ``(n_pass, d)``, ``acts_fail``
    ``(n_fail, d)``; computed in blocks of features with a batched binary search.
    """
    p, f = _check_pair(acts_pass, acts_fail)
    n_p, n_f, d = p.shape[0], f.shape[0], p.shape[1]
    out = torch.empty(d, dtype=torch.float64)
    step = max(1, _MAX_BLOCK // (n_p + n_f))
    for s in range(0, d, step):
        fs = f[:, s : s + step].T.contiguous().sort(dim=1).values  # (c, n_f)
        q = p[:, s : s + step].T.contiguous()  # (c, n_p)
        below = torch.searchsorted(fs, q, right=False)  # fail values < each pass value
        at_or_below = torch.searchsorted(fs, q, right=True)  # ... <=
        # U = #(fail < pass) + ½ #(fail == pass) = ½ (below + at_or_below), summed over pass
        out[s : s + step] = (below + at_or_below).sum(dim=1).double() / (2.0 * n_p * n_f)
    return out


def permutation_p(
    acts_pass: torch.Tensor, acts_fail: torch.Tensor, n_perm: int = 1000, seed: int = 0
) -> torch.Tensor:
    """Two-sided permutation p-value of ``mean(pass) - mean(fail)`` per feature ``(d,)``.

    The class labels are shuffled ``n_perm`` times (the same shuffles for every feature, drawn
    from ``seed``); ``p = (1 + #{|perm diff| >= |observed diff|}) / (1 + n_perm)``. Each block of
    shuffles is one matrix product over all features: with ``S`` the sum over the shuffled pass
    set, ``diff = S·(1/n_pass + 1/n_fail) - total/n_fail``.
    """
    if isinstance(n_perm, bool) or not isinstance(n_perm, int) or n_perm < 1:
        raise SteerlabError(f"n_perm must be a positive int, got {n_perm!r}")
    p, f = _check_pair(acts_pass, acts_fail)
    n_p, n_f = p.shape[0], f.shape[0]
    x = torch.cat([p, f])  # (n, d) float64
    n = n_p + n_f
    total = x.sum(0)  # (d,)
    scale = 1.0 / n_p + 1.0 / n_f
    observed = (p.mean(0) - f.mean(0)).abs() * (1.0 - _REL_TOL)  # (d,)
    hits = torch.zeros(x.shape[1], dtype=torch.int64)
    gen = torch.Generator().manual_seed(int(seed))
    for start in range(0, n_perm, _PERM_CHUNK):
        c = min(_PERM_CHUNK, n_perm - start)
        chosen = torch.rand((c, n), generator=gen).argsort(dim=1)[:, :n_p]  # (c, n_p)
        member = torch.zeros((c, n), dtype=torch.float64).scatter_(1, chosen, 1.0)
        diffs = (member @ x) * scale - total / n_f  # (c, d)
        hits += (diffs.abs() >= observed).sum(0)
    return (1.0 + hits.double()) / (1.0 + n_perm)


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both classes as float64 CPU ``(n, d)``, or one clear error."""
    for what, t in (("pass", a), ("fail", b)):
        if not isinstance(t, torch.Tensor) or t.ndim != 2:
            raise SteerlabError(f"{what} activations must be a 2-D tensor (n, d_sae)")
        if t.shape[0] < 1:
            raise SteerlabError(f"no {what} activations: each class needs at least one row")
    if a.shape[1] != b.shape[1]:
        raise SteerlabError(
            f"pass and fail activations differ in width: {a.shape[1]} vs {b.shape[1]} features"
        )
    a, b = a.detach().to("cpu", torch.float64), b.detach().to("cpu", torch.float64)
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise SteerlabError("activations contain NaN or inf")
    return a, b


@dataclass(frozen=True)
class FeatureScore:
    """One feature's separation of passing from failing problems.

    ``diff = mean_pass - mean_fail`` (in the SAE's activation units); ``auroc``: how well the
    activation predicts *pass* (0.5: not at all, 1: every passing problem above every failing
    one, 0: the reverse); ``frac_*``: the share of problems on which the feature fires;
    ``p_value``: two-sided permutation p of ``diff``; ``p_bonferroni``: times the number of
    features tested (at most 1).
    """

    feature: int
    auroc: float
    diff: float
    mean_pass: float
    mean_fail: float
    frac_pass: float
    frac_fail: float
    p_value: float
    p_bonferroni: float
    n_pass: int
    n_fail: int
    prefers: str  # "correct", "incorrect", or "" (AUROC and diff disagree)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


COLUMNS = tuple(f.name for f in fields(FeatureScore))


@dataclass(frozen=True, eq=False)
class FeatureScores:
    """Scores of the live features of an SAE (see the module docstring for the ranking).

    Arrays are ``(n_tested,)``, aligned with ``features`` (ascending feature indices); they are
    read-only.
    """

    features: IntArray
    mean_pass: FloatArray
    mean_fail: FloatArray
    auroc: FloatArray
    frac_pass: FloatArray
    frac_fail: FloatArray
    p_value: FloatArray
    n_pass: int
    n_fail: int
    d_sae: int
    n_perm: int
    seed: int

    @property
    def diff(self) -> FloatArray:
        return self.mean_pass - self.mean_fail

    @property
    def n_tested(self) -> int:
        """Live features, each tested once (the multiple-comparison count)."""
        return int(self.features.shape[0])

    @property
    def n_dead(self) -> int:
        return self.d_sae - self.n_tested

    @property
    def p_bonferroni(self) -> FloatArray:
        return np.minimum(1.0, self.p_value * self.n_tested)

    @property
    def min_p(self) -> float:
        """The smallest p-value ``n_perm`` permutations can give."""
        return 1.0 / (1.0 + self.n_perm)

    def prefers(self) -> npt.NDArray[np.str_]:
        """``correct``, ``incorrect`` or ``""`` per feature."""
        diff = self.diff
        out = np.full(self.n_tested, "", dtype="<U9")
        out[(self.auroc > 0.5) & (diff > 0)] = "correct"
        out[(self.auroc < 0.5) & (diff < 0)] = "incorrect"
        return out

    def order(self, direction: Direction | None = None) -> IntArray:
        """Positions into the arrays, best first: of ``direction``'s features, or of all (by
        AUROC descending: correct-preferring first, incorrect-preferring last)."""
        diff = self.diff
        if direction is None:
            return np.lexsort((self.features, -diff, -self.auroc)).astype(np.int64)
        if direction not in DIRECTIONS:
            raise SteerlabError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        sign = 1.0 if direction == "correct" else -1.0
        keep = np.flatnonzero(self.prefers() == direction)
        key = np.lexsort((self.features[keep], -sign * diff[keep], -sign * self.auroc[keep]))
        return keep[key].astype(np.int64)

    def record(self, i: int, prefers: str | None = None) -> FeatureScore:
        """The record at array position ``i`` (not feature index; see :meth:`of`)."""
        if prefers is None:
            prefers = str(self.prefers()[i])
        return FeatureScore(
            feature=int(self.features[i]),
            auroc=float(self.auroc[i]),
            diff=float(self.mean_pass[i] - self.mean_fail[i]),
            mean_pass=float(self.mean_pass[i]),
            mean_fail=float(self.mean_fail[i]),
            frac_pass=float(self.frac_pass[i]),
            frac_fail=float(self.frac_fail[i]),
            p_value=float(self.p_value[i]),
            p_bonferroni=float(min(1.0, self.p_value[i] * self.n_tested)),
            n_pass=self.n_pass,
            n_fail=self.n_fail,
            prefers=prefers,
        )

    def of(self, feature: int) -> FeatureScore:
        """The record of SAE feature ``feature`` (an error for a dead or unknown one)."""
        i = int(np.searchsorted(self.features, feature))
        if i >= self.n_tested or int(self.features[i]) != feature:
            raise SteerlabError(f"feature {feature} was not scored (dead, or not a feature)")
        return self.record(i)

    def top(self, direction: Direction, n: int | None = None) -> list[FeatureScore]:
        """The ``n`` best features preferring ``direction`` (all of them when ``n`` is None)."""
        order = self.order(direction)
        return [self.record(int(i), direction) for i in (order if n is None else order[:n])]

    def records(self) -> list[FeatureScore]:
        """Every live feature, by AUROC descending."""
        prefers = self.prefers()
        return [self.record(int(i), str(prefers[i])) for i in self.order()]


def feature_scores(
    acts_pass: torch.Tensor, acts_fail: torch.Tensor, n_perm: int = 1000, seed: int = 0
) -> FeatureScores:
    """Score every feature's separation of passing from failing problems.

    ``acts_pass`` ``(n_pass, d_sae)`` and ``acts_fail`` ``(n_fail, d_sae)`` are SAE feature
    activations, one row per problem. Features active (non-zero) on no row of either class are
    dead and left out; the rest get means, firing fractions, AUROC and a permutation p-value
    (``n_perm`` label shuffles drawn from ``seed``).
    """
    if isinstance(n_perm, bool) or not isinstance(n_perm, int) or n_perm < 1:
        raise SteerlabError(f"n_perm must be a positive int, got {n_perm!r}")
    p, f = _check_pair(acts_pass, acts_fail)
    live = ((p != 0).any(0) | (f != 0).any(0)).nonzero().flatten()  # (m,)
    p, f = p[:, live], f[:, live]

    def arr(t: torch.Tensor) -> FloatArray:
        a = t.numpy().astype(np.float64)
        a.setflags(write=False)
        return a

    feats = live.numpy().astype(np.int64)
    feats.setflags(write=False)
    auc, pval = auroc(p, f), permutation_p(p, f, n_perm, seed)
    return FeatureScores(
        features=feats,
        mean_pass=arr(p.mean(0)),
        mean_fail=arr(f.mean(0)),
        auroc=arr(auc),
        frac_pass=arr((p != 0).double().mean(0)),
        frac_fail=arr((f != 0).double().mean(0)),
        p_value=arr(pval),
        n_pass=int(p.shape[0]),
        n_fail=int(f.shape[0]),
        d_sae=int(acts_pass.shape[1]),
        n_perm=n_perm,
        seed=int(seed),
    )


# ----------------------------------------------------------------------------- activations


def encode_prompts(
    model: Model,
    sae: SparseAutoencoder,
    prompts: Sequence[str],
    position: str = "last",
    batch_size: int = 16,
    progress: bool = False,
    desc: str = "SAE features",
) -> torch.Tensor:
    """SAE feature activations of each prompt at ``position`` ``(N, d_sae)`` float32 CPU.

    Prompts are text exactly as the model saw it (chat template applied already), tokenized as
    trusted text (:meth:`~steerlab.models.Model.encode`: special-token markers are special
    tokens, BOS added unless present). ``last``: the activation at the last prompt token, encoded;
    ``mean``: the encoded activations of every prompt token but the first, averaged (the first
    alone for a one-token prompt). Batches are formed by length (less padding); rows come back in
    the order given.
    """
    if position not in POSITIONS:
        raise SteerlabError(f"unknown position {position!r}: use one of {', '.join(POSITIONS)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SteerlabError(f"batch_size must be a positive int, got {batch_size!r}")
    if not prompts:
        raise SteerlabError("no prompts to encode")
    sae.check_model(model)
    seqs = [model.encode(p) for p in prompts]
    empty = [i for i, s in enumerate(seqs) if not s]
    if empty:
        raise SteerlabError(f"prompt {empty[0]} encodes to no tokens")
    enc = sae.to(device=model.device)  # its own dtype: encoding in float32 when it is float32
    site = sae.site
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = torch.empty((len(seqs), sae.d_sae), dtype=torch.float32)
    bar = tqdm(total=len(seqs), desc=desc, unit="prompt", disable=not progress)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = [seqs[i] for i in rows]
            # left padding: every row ends at the last column
            ids, mask = left_pad(batch, model.pad_token_id, model.device)  # (B, W)
            sink: list[torch.Tensor] = []

            def grab(h: torch.Tensor, sink: list[torch.Tensor] = sink) -> torch.Tensor:
                sink.append(h)  # (B, W, d_model)
                return h

            steered_forward(local_backend(model), ids, mask, record={site: [grab]}, stop_at=site)
            out[rows] = _pool(enc, sink[-1], mask, position).float().cpu()
            bar.update(len(batch))
    bar.close()
    return out


def _pool(
    sae: SparseAutoencoder, h: torch.Tensor, mask: torch.Tensor, position: str
) -> torch.Tensor:
    """Feature activations ``(B, d_sae)`` of a left-padded batch ``h`` ``(B, W, d)``."""
    lengths = mask.sum(-1)  # (B,)
    if position == "last":
        last = int(mask.shape[1]) - 1  # left padded: each row's last token (from the mask: real)
        return sae.encode(h[:, last])
    # every real token but each row's first (a one-token row keeps its one)
    keep = mask.bool().clone()
    first = mask.shape[1] - lengths  # (B,) column of each row's first token
    rows_long = (lengths > 1).nonzero().flatten()
    keep[rows_long, first[rows_long]] = False
    r, c = keep.nonzero(as_tuple=True)  # (T,), (T,)
    acc = torch.zeros((h.shape[0], sae.d_sae), dtype=torch.float32, device=h.device)
    step = max(1, _MAX_BLOCK // sae.d_sae)
    for s in range(0, r.numel(), step):
        acc.index_add_(0, r[s : s + step], sae.encode(h[r[s : s + step], c[s : s + step]]).float())
    return acc / keep.sum(-1, keepdim=True).to(acc.dtype)


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Written:
    """What :func:`write_results` wrote: the table, the summary and the vector files."""

    features_csv: Path
    top_json: Path
    vectors: dict[str, list[Path]]


def feature_vector(
    sae: SparseAutoencoder,
    score: FeatureScore,
    role: Direction,
    model: Model | None = None,
    details: dict[str, Any] | None = None,
) -> SteeringVector:
    """Feature ``score.feature``'s decoder row as a vector (:func:`steerlab.directions.sae`),
    with its scores and ``role`` (``correct``: adding it should make code pass) in ``extra``."""
    from steerlab.directions.sae import sae as sae_direction

    vec = sae_direction(sae, score.feature, model=model)
    found = {"role": role, **score.as_dict(), **(details or {})}
    return replace(vec, extra={**vec.extra, "discovery": found})


def write_results(
    out: str | Path,
    scores: FeatureScores,
    sae: SparseAutoencoder,
    *,
    position: str,
    top: int = 10,
    export_top: int = 1,
    model: Model | None = None,
    details: dict[str, Any] | None = None,
) -> Written:
    """Write ``features.csv`` (every live feature, by AUROC descending), the top ``top`` of each
    direction with ``details`` (source, counts, ...) to ``top_features.json``, and the decoder
    rows of the best ``export_top`` of each direction as ``correct_f<i>.safetensors`` /
    ``incorrect_f<i>.safetensors``. Each file is written atomically; the JSON last.
    """
    from steerlab._util.io import atomic_path, atomic_write_text

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SteerlabError(f"--out {out} exists and is not a directory")
    details = dict(details or {})
    tops = {d: scores.top(d, max(top, export_top)) for d in DIRECTIONS}
    vectors: dict[str, list[Path]] = {d: [] for d in DIRECTIONS}
    built = {
        d: [
            feature_vector(sae, s, d, model, {"position": position, "n_tested": scores.n_tested})
            for s in tops[d][:export_top]
        ]
        for d in DIRECTIONS
    }  # before any write: a feature without a direction fails here, with nothing written
    out.mkdir(parents=True, exist_ok=True)
    for d in DIRECTIONS:
        for vec in built[d]:
            feature = int(vec.extra["feature"])
            vectors[d].append(vec.save(out / f"{d}_f{feature}.safetensors"))
    csv_path = out / FEATURES_CSV
    with atomic_path(csv_path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        for rec in scores.records():
            writer.writerow([getattr(rec, c) for c in COLUMNS])
    summary = {
        "sae": {
            "source": sae.source,
            "architecture": sae.architecture,
            "d_sae": sae.d_sae,
            "model_name": sae.model_name,
        },
        "site": sae.hook_name,
        "position": position,
        **details,
        "n_pass": scores.n_pass,
        "n_fail": scores.n_fail,
        "n_features": scores.d_sae,
        "n_dead": scores.n_dead,
        "n_features_tested": scores.n_tested,
        "n_perm": scores.n_perm,
        "seed": scores.seed,
        "min_p": scores.min_p,
        "ranking": RANKING,
        "correct": [s.as_dict() for s in tops["correct"][:top]],
        "incorrect": [s.as_dict() for s in tops["incorrect"][:top]],
        "vectors": {d: [str(p) for p in ps] for d, ps in vectors.items()},
    }
    top_path = out / TOP_JSON
    atomic_write_text(top_path, json.dumps(_finite(summary), indent=2) + "\n")
    return Written(csv_path, top_path, vectors)


def _finite(obj: Any) -> Any:
    """JSON without NaN (strict parsers reject it): NaN becomes null."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj
