"""Did-you-mean hints for names a user typed: hosts, tags, tasks, parameters, keys."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def close_matches(word: str, candidates: Iterable[str], n: int = 1) -> list[str]:
    """The candidates closest to ``word`` (difflib's ratio ≥ 0.6), best first."""
    return difflib.get_close_matches(word, sorted({str(c) for c in candidates}), n=n, cutoff=0.6)


def did_you_mean(word: str, candidates: Iterable[str], fmt: str = "{!r}") -> str:
    """``" (did you mean 'x'?)"``, or ``""`` when nothing is close; ``fmt`` spells a candidate."""
    close = close_matches(word, candidates)
    if not close:
        return ""
    return f" (did you mean {' or '.join(fmt.format(c) for c in close)}?)"
