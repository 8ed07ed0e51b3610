"""Experiments made of whole runs of the entry points (the paper's ablation grid)."""
