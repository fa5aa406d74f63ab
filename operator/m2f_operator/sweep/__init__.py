"""Mask2FormerSweep: hyperparameter search whose trials are child Mask2FormerTrain resources (docs/sweep.md)."""
