"""Diversity and quality of a set of outputs: distinct-n, BLEU, self-BLEU, best-of-n BLEU.

- distinct-n (Li et al. 2016, arXiv 1510.03055): distinct n-grams / all n-grams over the set.
- BLEU (Papineni et al. 2002): geometric mean of clipped n-gram precisions (n = 1..4) times a
  brevity penalty, per sentence, with the +1 smoothing of Lin & Och 2004 for n > 1 so that one
  missing 4-gram does not zero a sentence.
- self-BLEU (Zhu et al. 2018, arXiv 1802.01886): mean BLEU of each output against the others;
  lower means more diverse.

Texts are compared as lower-cased words and punctuation marks.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence

_WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks.

    >>> words("Paris, France!")
    ['paris', ',', 'france', '!']
    """
    return _WORD.findall(text.lower())


def ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def distinct_n(texts: Sequence[str], n: int = 2) -> float | None:
    """Distinct n-grams over all n-grams of the texts; None when there is no n-gram.

    >>> distinct_n(["a b c", "a b d"], 2)
    0.75
    """
    counts = Counter()
    for text in texts:
        counts.update(ngrams(words(text), n))
    total = sum(counts.values())
    return len(counts) / total if total else None


def bleu(hypothesis: str, references: Sequence[str], max_n: int = 4) -> float:
    """Sentence BLEU in [0, 1] of one hypothesis against one or more references.

    >>> bleu("the cat sat on the mat", ["the cat sat on the mat"])
    1.0
    >>> round(bleu("the cat", ["the cat sat on the mat"]), 4)
    0.1353
    """
    hyp = words(hypothesis)
    refs = [words(r) for r in references]
    if not hyp or not refs:
        return 0.0
    log_precision = 0.0
    for n in range(1, max_n + 1):
        hyp_counts = ngrams(hyp, n)
        most = Counter()
        for ref in refs:
            most |= ngrams(ref, n)  # clip by the largest count in any one reference
        matched = sum(min(c, most[g]) for g, c in hyp_counts.items())
        total = sum(hyp_counts.values())
        smooth = 1 if n > 1 else 0
        if matched + smooth == 0 or total + smooth == 0:
            return 0.0
        log_precision += math.log((matched + smooth) / (total + smooth)) / max_n
    closest = min((abs(len(r) - len(hyp)), len(r)) for r in refs)[1]
    brevity = 1.0 if len(hyp) > closest else math.exp(1 - closest / len(hyp))
    return brevity * math.exp(log_precision)


def self_bleu(texts: Sequence[str]) -> float | None:
    """Mean BLEU of each text against all the others; None for fewer than two texts.

    >>> self_bleu(["a b c d", "a b c d"])
    1.0
    """
    if len(texts) < 2:
        return None
    return sum(bleu(t, [o for j, o in enumerate(texts) if j != i]) for i, t in enumerate(texts)) / len(texts)


def best_of_n_bleu(texts: Sequence[str], references: Sequence[str]) -> float | None:
    """The best BLEU of any text against the references; None without references."""
    if not references or not texts:
        return None
    return max(bleu(t, references) for t in texts)
