"""'Did you mean' suggestions for misspelt names."""

from __future__ import annotations

import difflib


def closest(word: str, options) -> str | None:
    """The option closest to a misspelt ``word``, or None when nothing is close."""
    options = [str(o) for o in options]
    close = difflib.get_close_matches(str(word), options, n=1, cutoff=0.6)
    if close:
        return close[0]
    lowered = {o.lower(): o for o in options}
    return lowered.get(str(word).lower())


def did_you_mean(word: str, options) -> str | None:
    """``did you mean 'filters'?`` for the closest option, or None when nothing is close."""
    close = closest(word, options)
    return f"did you mean '{close}'?" if close else None


def one_of(options, limit: int = 40) -> str:
    options = sorted(str(o) for o in options)
    shown = ", ".join(options[:limit])
    return shown + (", ..." if len(options) > limit else "")
