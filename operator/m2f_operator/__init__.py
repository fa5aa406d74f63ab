"""Kubernetes operator for Mask2Former training, evaluation, inference and export resources."""

__version__ = "0.1.0"
