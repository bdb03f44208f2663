"""Reporting: every report's tables, figures and documents (evaluate.py, score.py, ablate.py,
external validation), rendered from the numbers cxr.evaluation and cxr.scoring compute."""
