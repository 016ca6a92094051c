"""The final report: figures, a self-contained HTML page, a Markdown summary, DVC metrics and
verdicts on the paper's claims computed from a finished run.

Modules: `tables` (load the run), `summary` (headline numbers, and the evidence form the verdicts
read), `paper` (the paper's numbers from `paper_numbers.yaml`, as evidence of the same form),
`claims` (each claim declared once with its rule and thresholds; the verdicts on a run and on the
paper), `figures` (drawn into the names `artifacts.REPORT_FIGURES` declares), `html` (HTML and
Markdown rendering), `build` (the stage).
"""
