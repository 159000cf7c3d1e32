"""Evaluation following the LLM-Adapters protocol (spec section 4)."""

from rosa.eval.scoring import SCORED_TASKS, extract_answer, is_correct

__all__ = ["SCORED_TASKS", "extract_answer", "is_correct"]
