"""``rosa sweep``: a grid of training runs, evaluated and collected into one table and plots."""

from rosa.sweep.plan import PRESETS, Axis, parse_axis
from rosa.sweep.report import write_report
from rosa.sweep.runner import EvalSettings, plan_sweep, run_points

__all__ = ["PRESETS", "Axis", "EvalSettings", "parse_axis", "plan_sweep", "run_points", "write_report"]
