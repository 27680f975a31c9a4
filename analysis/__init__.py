"""analysis: scaling-law fits, emergence curves, figures and reports from results tables.

It reads `results.csv` / `fewshot.csv` (or any CSV given a column mapping) and never imports lmscale.
"""
