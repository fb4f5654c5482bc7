"""Text to train a sparse autoencoder on, from what exists offline.

Four sources, in this order, until the token budget is reached:

1. ``prompts``: the shipped prompt sets (``steerlab/data/prompts/*.jsonl``) and question
   paraphrases (``steerlab/data/questions/*.yaml``), chat-formatted as the model sees them when
   steered;
2. ``generated``: the model's own answers to some of those prompts (sampled, seeded), kept with
   their prompt, so the SAE sees the model's assistant turns;
3. ``code``: shipped code sets (``steerlab/data/code/*.jsonl``) when the package has them;
4. ``stdlib``: the Python standard library's source files (code, docstrings and prose such as
   ``pydoc_data``), a few evenly spaced token windows per file, files in a seeded order.

A :class:`Document` is a token-id sequence plus how many leading tokens to leave out. The first
token is always left out: in most models it is an attention sink whose residual norm is 100x the
others' (SmolLM2-135M: ~25,000 against ~180 at layer 15). Chat-formatted documents after the first
also leave out the template prefix every prompt shares (e.g. the default system turn): causal
attention makes its activations identical in every prompt, so they would be counted hundreds of
times.

:func:`corpus_hash` fingerprints every file that could contribute (and the settings), without
tokenizing or generating anything, so a cache can be checked before any work.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from steerlab.errors import SteerlabError
from steerlab.models import Model

logger = logging.getLogger(__name__)

SOURCES = ("prompts", "generated", "code", "stdlib")
#: fields of a code-set row that hold text, in the order they are joined
_CODE_FIELDS = ("prompt", "canonical_solution", "solution", "code", "completion", "text", "test")
_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test"})
#: held-out documents are taken from every ``_HOLDOUT_EVERY``-th document, offset by half
_HOLDOUT_EVERY = 16


@dataclass(frozen=True)
class CorpusConfig:
    """How the corpus is built.

    ``context``: tokens per standard-library / code window (other documents are cut at
    ``2 * context``); ``generations``: how many prompts the model answers (0 = none), with
    ``gen_tokens`` new tokens each, sampled at ``gen_temperature`` / ``gen_top_p`` from seeds
    derived from ``seed`` (which also orders the prompts and the standard-library files);
    ``windows_per_file``: at most this many windows from one source file.
    """

    context: int = 128
    generations: int = 64
    gen_tokens: int = 128
    gen_temperature: float = 0.8
    gen_top_p: float = 0.95
    windows_per_file: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.context < 2:
            raise SteerlabError("the context must be at least 2 tokens")
        if self.generations < 0 or self.gen_tokens < 1 or self.windows_per_file < 1:
            raise SteerlabError("generations >= 0, gen_tokens >= 1, windows_per_file >= 1")


@dataclass(frozen=True)
class Document:
    """One token sequence, where it came from (one of :data:`SOURCES`) and how many leading
    tokens are left out (``skip`` >= 1)."""

    source: str
    ids: tuple[int, ...]
    skip: int = 1

    @property
    def n_train(self) -> int:
        """Tokens whose activations are used (all but the first ``skip``)."""
        return max(len(self.ids) - self.skip, 0)


@dataclass(frozen=True)
class Corpus:
    """Training documents and held-out documents (never trained on), and token counts."""

    train: tuple[Document, ...]
    heldout: tuple[Document, ...]

    def counts(self) -> dict[str, dict[str, int]]:
        """Per split, per source: documents and usable tokens."""
        out: dict[str, dict[str, int]] = {}
        for split, docs in (("train", self.train), ("heldout", self.heldout)):
            for d in docs:
                out.setdefault(split, {}).setdefault(f"{d.source}_docs", 0)
                out[split][f"{d.source}_docs"] += 1
                out[split].setdefault(f"{d.source}_tokens", 0)
                out[split][f"{d.source}_tokens"] += d.n_train
        return out


# ----------------------------------------------------------------------------- sources


def _data_files(kind: str, suffix: str) -> list[Any]:
    root = files("steerlab") / "data" / kind
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.name.endswith(suffix)), key=lambda p: p.name)


def stdlib_files() -> list[Path]:
    """Source files of this Python's standard library (no tests, no installed packages)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found = [
        p for p in root.rglob("*.py") if not _SKIP_DIRS.intersection(p.relative_to(root).parts[:-1])
    ]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def prompt_texts() -> list[str]:
    """User messages from the shipped prompt sets and question files, in file order."""
    texts: list[str] = []
    for f in _data_files("prompts", ".jsonl"):
        for line in f.read_text(encoding="utf-8").splitlines():
            if line.strip():
                prompt = json.loads(line).get("prompt")
                if isinstance(prompt, str) and prompt.strip():
                    texts.append(prompt)
    for f in _data_files("questions", ".yaml"):
        items = yaml.safe_load(f.read_text(encoding="utf-8")) or []
        for item in items if isinstance(items, list) else []:
            for p in item.get("paraphrases", []) if isinstance(item, dict) else []:
                if isinstance(p, str) and p.strip():
                    texts.append(p)
    return texts


def code_texts() -> list[str]:
    """One text per row of the shipped code sets (``data/code/*.jsonl``), if any."""
    texts: list[str] = []
    for f in _data_files("code", ".jsonl"):
        for line in f.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row, dict):
                continue
            parts = [row[k] for k in _CODE_FIELDS if isinstance(row.get(k), str)]
            if not parts:
                parts = [v for v in row.values() if isinstance(v, str)]
            text = "\n".join(parts)
            if text.strip():
                texts.append(text)
    return texts


def corpus_hash(config: CorpusConfig) -> str:
    """sha256 of every file a corpus may draw from, the Python version and ``config``."""
    h = hashlib.sha256()
    h.update(json.dumps(asdict(config), sort_keys=True).encode())
    h.update(sys.version.encode())
    for kind, suffix in (("prompts", ".jsonl"), ("questions", ".yaml"), ("code", ".jsonl")):
        for f in _data_files(kind, suffix):
            h.update(f"{kind}/{f.name}\0".encode())
            h.update(f.read_bytes())
    root = Path(sysconfig.get_paths()["stdlib"])
    for p in stdlib_files():
        h.update(f"stdlib/{p.relative_to(root).as_posix()}\0".encode())
        h.update(p.read_bytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- building


def _plain_ids(model: Model, text: str) -> list[int]:
    """Token ids of raw text (special-token markers in it stay text)."""
    return list(model.format_prompt(text, chat=False).ids)


def _windows(ids: list[int], context: int, limit: int) -> list[tuple[int, ...]]:
    """Up to ``limit`` evenly spaced, non-overlapping windows of ``context`` tokens (a shorter
    text is one window)."""
    if len(ids) <= context:
        return [tuple(ids)] if len(ids) >= 2 else []
    n = len(ids) // context
    picks = sorted({round(i * (n - 1) / max(limit - 1, 1)) for i in range(min(limit, n))})
    return [tuple(ids[j * context : (j + 1) * context]) for j in picks]


def _common_prefix(seqs: list[tuple[int, ...]]) -> int:
    """Length of the longest prefix shared by every sequence (0 for none)."""
    if not seqs:
        return 0
    n = min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != seqs[0][i] for s in seqs):
            return i
    return n


def _generated(
    model: Model, prompts: list[str], config: CorpusConfig, skip: int, progress: bool
) -> list[Document]:
    from steerlab.engine.generate import GenerationConfig, Row, generate

    if not prompts or config.generations == 0:
        return []
    rng = random.Random(config.seed)
    chosen = rng.sample(prompts, min(config.generations, len(prompts)))
    rows = [
        Row(model.format_prompt(p), seed=config.seed * 1_000_003 + i) for i, p in enumerate(chosen)
    ]
    gen = GenerationConfig(
        max_new_tokens=config.gen_tokens,
        temperature=config.gen_temperature,
        top_p=config.gen_top_p,
        batch_size=64,
    )
    results = generate(model, rows, gen, progress=progress)
    return [
        Document(
            "generated",
            (*model.encode(row.prompt), *res.token_ids)[: 2 * config.context],
            skip,
        )
        for row, res in zip(rows, results, strict=True)
    ]


def _documents(model: Model, config: CorpusConfig, progress: bool) -> Iterator[Document]:
    """Every document, sources in :data:`SOURCES` order; the standard library is read lazily."""
    prompts = prompt_texts()
    encoded = [tuple(model.encode(model.format_prompt(t)))[: 2 * config.context] for t in prompts]
    # the template prefix every prompt shares is used once, in the first prompt
    skip = max(_common_prefix(encoded), 1)
    for i, ids in enumerate(encoded):
        yield Document("prompts", ids, 1 if i == 0 else skip)
    yield from _generated(model, prompts, config, skip, progress)
    for text in code_texts():
        for w in _windows(_plain_ids(model, text), config.context, config.windows_per_file):
            yield Document("code", w)
    paths = stdlib_files()
    random.Random(config.seed).shuffle(paths)
    for p in paths:
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        for w in _windows(_plain_ids(model, text), config.context, config.windows_per_file):
            yield Document("stdlib", w)


def build_corpus(
    model: Model,
    tokens: int,
    heldout_tokens: int,
    config: CorpusConfig | None = None,
    progress: bool = True,
) -> Corpus:
    """Documents holding ``tokens`` usable training tokens, plus about ``heldout_tokens`` held
    out (every 16th document, from every source, until that many). A document identical to an
    earlier one (the same short file in two packages) is dropped.

    Raises :class:`~steerlab.errors.SteerlabError` when all sources together hold fewer tokens.
    """
    cfg = config or CorpusConfig()
    if tokens < 1 or heldout_tokens < 1:
        raise SteerlabError("the training and held-out token counts must be at least 1")
    train: list[Document] = []
    heldout: list[Document] = []
    n_train = n_held = 0
    seen: set[tuple[int, ...]] = set()
    for i, doc in enumerate(_documents(model, cfg, progress)):
        if doc.n_train == 0 or doc.ids in seen:
            continue
        seen.add(doc.ids)
        if i % _HOLDOUT_EVERY == _HOLDOUT_EVERY // 2 and n_held < heldout_tokens:
            heldout.append(doc)
            n_held += doc.n_train
        elif n_train < tokens:
            train.append(doc)
            n_train += doc.n_train
        if n_train >= tokens and n_held >= heldout_tokens:
            break
    if n_train < tokens or not heldout:
        raise SteerlabError(
            f"the offline corpus holds only {n_train} training tokens ({n_held} held out); "
            f"ask for fewer than {tokens}"
        )
    logger.info("corpus: %d training tokens, %d held out", n_train, n_held)
    return Corpus(tuple(train), tuple(heldout))
