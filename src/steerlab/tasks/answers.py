"""Reading a generated answer into a label (or ``uncertain``) and its explanation; the words
and rules come from the task config (see :func:`parse_answer`)."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from steerlab.tasks.task_config import norm_word

if TYPE_CHECKING:
    from steerlab.tasks.task_config import TaskConfig

_PREFIX_WORDS = frozenset({"answer", "verdict", "final", "label", "classification"})


@dataclass(frozen=True)
class _Mention:
    """An answer word found in the text: the label it states, where, and how it is meant."""

    label: str
    start: int
    end: int
    negated: bool
    muted: bool  # in a question or under a condition: it states no verdict


_MARKUP = " \t\r\n*_`'\"#>"  # markdown and quotes around a verdict ("**Secure**")
_M = re.escape(_MARKUP)
_CLAUSE_END = re.compile(r"[.,;:!?\n—–]|\s-\s")
_SENTENCE_END = re.compile(r"[.!\n]|(?<=\S)\?")  # not "p ? a : b" in quoted code
_STANDS_ALONE = re.compile(r"$|[.,;:!?\n—–-]")
_JUNK = re.compile(f"^[{_M}.,;:!—–-]*")
_OPENING = re.compile(
    f"^[{_M}]*(?:(?:{'|'.join(sorted(_PREFIX_WORDS))})\\b[{_M}:.,-]*)*", re.IGNORECASE
)
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")


def _phrases(words: list[str]) -> str:
    """An alternation matching any of ``words`` as whole words, the longest first, any run of
    spaces between the words of a phrase."""
    ordered = sorted(dict.fromkeys(norm_word(w) for w in words), key=len, reverse=True)
    return "|".join(r"\s+".join(re.escape(part) for part in w.split()) for w in ordered)


def _tokens(text: str) -> list[str]:
    """Lower-cased words, "n't" split off ("isn't" -> "is", "n't")."""
    out: list[str] = []
    for word in _WORD.findall(text.casefold()):
        if word.endswith("n't"):
            out += [word[:-3], "n't"] if len(word) > 3 else ["n't"]
        else:
            out.append(word)
    return out


def _opens(text: str, m: re.Match[str], opening: int) -> bool:
    """Whether ``m`` is a whole first clause: of the answer, or right after a question the
    answer restates ("Is it vulnerable? No.")."""
    first = m.start() == opening or text[: m.start()].rstrip(_MARKUP).endswith("?")
    return first and _STANDS_ALONE.match(text[m.end() :].lstrip(_MARKUP)) is not None


def _mentions(text: str, cfg: TaskConfig) -> list[_Mention]:
    """Every answer word in ``text``, in order (rules 2 to 4 of :func:`parse_answer`)."""
    p = cfg.parser
    label_of = {
        norm_word(w): label
        for words_of in (cfg.answer_words, p.extra_words)
        for label, words in words_of.items()
        for w in words
    }
    pattern = re.compile(f"(?<![\\w-])(?:{_phrases(list(label_of))})(?![\\w-])", re.IGNORECASE)
    leading = {norm_word(w) for w in p.leading_only}
    negations = {n.casefold() for n in p.negations}
    conditionals = {c.casefold() for c in p.conditionals}
    first = _OPENING.match(text)
    opening = first.end() if first else 0
    out: list[_Mention] = []
    for m in pattern.finditer(text):
        key = norm_word(m.group())
        if key in leading and not _opens(text, m, opening):
            continue
        ends = [c.end() for c in _CLAUSE_END.finditer(text, 0, m.start())]
        before = _tokens(text[ends[-1] if ends else 0 : m.start()])
        near = before[len(before) - p.negation_window - 1 :] if before else []
        negated = sum(t in negations for t in near) % 2 == 1
        stop = _SENTENCE_END.search(text, m.end())
        question = stop is not None and stop.group() == "?"
        conditional = any(t in conditionals for t in before)
        out.append(_Mention(label_of[key], m.start(), m.end(), negated, question or conditional))
    return out


def parse_answer(text: str, cfg: TaskConfig) -> tuple[str, str]:
    """Read a generated ``text`` as ``(label, explanation)``; the label is one of
    ``cfg.labels`` or ``cfg.uncertain_label``.

    Rules, in order (matching is case-insensitive, on whole words, ignoring markdown):

    1. An empty answer is uncertain.
    2. Every answer word of a label (``answer_words`` and ``parser.extra_words``) found in the
       text is a mention of that label; a ``parser.leading_only`` word ("yes", "no") counts only
       as a whole first clause: of the answer ("No.", "**Yes**, it ...") or right after a
       question ("Is it vulnerable? No.").
    3. A mention in a sentence that ends with "?", or after a conditional ("whether", "if") in
       its clause, states no verdict. Two mentions of different labels joined by "or"
       ("vulnerable or secure") restate the question and state none either.
    4. A mention with an odd number of negations among the ``negation_window + 1`` words before
       it in its clause ("not secure", "isn't vulnerable", "does not appear to be vulnerable")
       states the other label when there are two labels, and nothing when there are more.
    5. A hedge ("not sure", "it depends") before the first verdict makes the answer uncertain;
       so does an answer with no verdict.
    6. Verdicts that disagree are read by ``parser.conflict``: ``first`` (the default) takes the
       first stated, ``uncertain`` gives up.

    The explanation is the rest of the answer after the verdict when the answer opens with it
    ("Vulnerable. The buffer ..." -> "The buffer ..."; a negation, "Answer:" or a restated
    question may come first), else the whole answer; stripped either way.
    """
    stripped = text.strip()
    uncertain = cfg.uncertain_label
    if not stripped:
        return uncertain, ""
    text = stripped.replace("\u2019", "'")  # same length: offsets hold for ``stripped`` too
    found = _mentions(text, cfg)
    alternative = re.compile(f"[{_M}]*,?[{_M}]*(?:or|nor)[{_M}]*", re.IGNORECASE)
    dropped: set[int] = set()
    for i, (a, b) in enumerate(itertools.pairwise(found)):
        if a.label != b.label and alternative.fullmatch(text, a.end, b.start):
            dropped |= {i, i + 1}
    labels = cfg.labels
    verdicts: list[tuple[str, _Mention]] = []
    for i, m in enumerate(found):
        if i in dropped or m.muted:
            continue
        if not m.negated:
            verdicts.append((m.label, m))
        elif len(labels) == 2:
            verdicts.append((labels[1 - labels.index(m.label)], m))
    if not verdicts:
        return uncertain, stripped
    label, first = verdicts[0]
    if cfg.parser.hedges:
        hedge = re.compile(f"(?<!\\w)(?:{_phrases(cfg.parser.hedges)})(?!\\w)", re.IGNORECASE)
        h = hedge.search(text)
        if h is not None and h.start() < first.start:
            return uncertain, stripped
    if cfg.parser.conflict == "uncertain" and len({v for v, _ in verdicts}) > 1:
        return uncertain, stripped
    negations = {n.casefold() for n in cfg.parser.negations}
    head = text[: first.start]
    head = head[head.rfind("?") + 1 :]  # a restated question may come first
    if all(t in negations or t in _PREFIX_WORDS for t in _tokens(head)):
        return label, _JUNK.sub("", stripped[first.end :]).strip()
    return label, stripped
