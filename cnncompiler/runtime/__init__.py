"""Stage 6: compiled artifacts on disk and the models that run them (TVM's runtime only)."""
