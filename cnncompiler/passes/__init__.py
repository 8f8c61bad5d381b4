"""Stage 4: optimisation passes, each a pure graph -> graph function with a name."""

from .manager import LEVELS, PASSES, format_reports, optimize, resolve_passes
from .rewrite import PassReport

__all__ = ["LEVELS", "PASSES", "PassReport", "format_reports", "optimize", "resolve_passes"]
