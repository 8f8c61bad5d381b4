"""cnnc: a declarative graph compiler for convolutional neural networks.

    import cnncompiler as cc
    graph, warnings = cc.check("specs/lenet5.yaml")
"""

from .errors import CnncError, SpecError
from .graph import load_checked as check

__version__ = "0.1.0"

__all__ = ["CnncError", "SpecError", "check", "__version__"]
