"""Stage 1: spec text to a flat list of named, parsed layers (blocks expanded)."""

from .parse import LayerDecl, Spec, load_spec, parse_spec_text

__all__ = ["LayerDecl", "Spec", "load_spec", "parse_spec_text"]
