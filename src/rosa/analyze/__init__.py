"""``rosa analyze``: the paper's Figure 1 (RoPE-rotated activation strength per head dimension) on any
model, and which layers Dynamic Layer Selection trained during a run."""

from rosa.analyze.activations import activation_strength, load_prompts, save_activation_report
from rosa.analyze.selection import analyze_layers, selection_summary, step_matrix

__all__ = [
    "activation_strength",
    "analyze_layers",
    "load_prompts",
    "save_activation_report",
    "selection_summary",
    "step_matrix",
]
