"""Hyperparameter sweeps shared by the operator (Mask2FormerSweep) and `m2f sweep`: search spaces, settings and
the Optuna search (extra `mask2former-spec[sweep]`; the space and settings import without Optuna)."""
