"""Policies: one per module, each a pure function of (resource spec/status, observed pods, now)."""

from m2f_operator.policies.cleanup import pods_to_clean
from m2f_operator.policies.deadline import deadline_remaining
from m2f_operator.policies.failure import FailureDecision, decide_failure
from m2f_operator.policies.observe import PodView, views
from m2f_operator.policies.success import stage_succeeded
from m2f_operator.policies.suspend import decide_suspend
from m2f_operator.policies.ttl import ttl_remaining

__all__ = [
    "FailureDecision",
    "PodView",
    "decide_failure",
    "decide_suspend",
    "deadline_remaining",
    "pods_to_clean",
    "stage_succeeded",
    "ttl_remaining",
    "views",
]
