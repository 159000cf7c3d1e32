"""Compare evaluated runs: one table of accuracy and training costs, and paired significance tests."""

from rosa.compare.results import EvalResult, load_result
from rosa.compare.significance import (
    BootstrapCI,
    McNemar,
    check_paired,
    mcnemar_exact,
    paired_bootstrap,
    render_significance_markdown,
    significance_rows,
)
from rosa.compare.table import comparison_rows, render_csv, render_markdown

__all__ = [
    "BootstrapCI",
    "EvalResult",
    "McNemar",
    "check_paired",
    "comparison_rows",
    "load_result",
    "mcnemar_exact",
    "paired_bootstrap",
    "render_csv",
    "render_markdown",
    "render_significance_markdown",
    "significance_rows",
]
