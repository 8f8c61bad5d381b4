"""A tuning budget as the user writes it: ``90s``, ``10m``, ``1h``, ``1h30m``, or plain seconds.

    parse_budget("10m")       # 600.0
    format_seconds(592.4)     # '9m52s'

No TVM here: the command line parses the budget before anything is compiled.
"""

from __future__ import annotations

import math
import re

from cnncompiler.errors import CnncError

_NUMBER = r"(\d+(?:\.\d+)?)"
_DURATION = re.compile(rf"(?:{_NUMBER}h)?(?:{_NUMBER}m)?(?:{_NUMBER}s)?")
MAX_BUDGET = 7 * 24 * 3600  # a week: beyond it, the value is a typo


def parse_budget(text, option: str = "--budget") -> float:
    """Seconds of wall-clock time in ``text``; a clear error for anything else."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        raw = str(text).strip().lower().replace(" ", "")
        plain = re.fullmatch(_NUMBER, raw)
        parts = _DURATION.fullmatch(raw)
        if plain:
            seconds = float(raw)
        elif raw and parts:
            hours, minutes, secs = (float(v or 0) for v in parts.groups())
            seconds = hours * 3600 + minutes * 60 + secs
        else:
            raise CnncError(f"{option} '{text}' is not a duration; expected a number with a unit "
                            "s, m or h, e.g. 90s, 10m, 1h or 1h30m")
    if not math.isfinite(seconds) or seconds <= 0 or seconds > MAX_BUDGET:
        raise CnncError(f"{option} '{text}' is out of range; expected more than 0 s and at most "
                        f"{MAX_BUDGET // 3600} h, e.g. 10m")
    return seconds


def format_seconds(seconds: float) -> str:
    """``42s``, ``9m52s``, ``1h05m``: as short as the size allows."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
