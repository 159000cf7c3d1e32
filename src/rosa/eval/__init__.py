"""Evaluation following the LLM-Adapters protocol (spec section 4): scoring, batched generation, runs."""

from rosa.eval.runner import evaluate
from rosa.eval.scoring import SCORED_TASKS, extract_answer, is_correct

__all__ = ["SCORED_TASKS", "evaluate", "extract_answer", "is_correct"]
