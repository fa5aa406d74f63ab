"""Hyperparameter sweeps shared by the operator (Mask2FormerSweep) and `m2f sweep`.

Search spaces and settings import without Optuna; the search itself (study.py) needs the `sweep` extra.
"""
