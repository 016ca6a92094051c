"""The final report: figures, a self-contained HTML page, a Markdown summary, DVC metrics and
verdicts on the paper's claims computed from a finished run.

Modules: `tables` (load the run), `summary` (headline numbers), `paper` (the paper's numbers and
the verdicts), `figures`, `html` (HTML and Markdown rendering), `build` (the stage).
"""

from bigram_subnetworks.report.figures import FIGURES, figure_names

__all__ = ["FIGURES", "figure_names"]
