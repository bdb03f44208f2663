"""Scoring (score.py): predictions CSVs matched to a reference standard and checked, the report
card's numbers, readers against the model's curves, report labelers' uncertain labels."""
