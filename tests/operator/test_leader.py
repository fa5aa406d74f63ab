"""Leader election survives an unreachable API server: a failed Lease call is a failed attempt, never a dead
elector thread (which would leave a leader that no longer renews, or a standby that never campaigns)."""

from __future__ import annotations

import threading

from kubernetes.leaderelection import electionconfig, leaderelection

from m2f_operator import leader


class _Unreachable:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def __getattr__(self, name):
        def call(*args, **kwargs):
            self.calls.append((name, kwargs))
            raise ConnectionError("connection refused")
        return call


def test_a_lease_call_that_cannot_reach_the_api_is_a_failed_attempt():
    api = _Unreachable()
    lock = leader._Lock("m2f", "ops", "me")
    lock.api_instance = leader._BoundedLeaseApi(api)
    config = electionconfig.Config(lock, lease_duration=leader.LEASE_SECONDS,
                                   renew_deadline=leader.RENEW_DEADLINE_SECONDS, retry_period=leader.RETRY_SECONDS,
                                   onstarted_leading=threading.Event().set, onstopped_leading=lambda: None)
    elector = leaderelection.LeaderElection(config)
    assert elector.try_acquire_or_renew() is False  # no exception escapes into the elector's thread
    assert lock.create("m2f", "ops", None) is False and lock.update("m2f", "ops", None) is False
    # Every call is bounded well inside the renew deadline.
    assert api.calls and all(kwargs["_request_timeout"] < leader.RENEW_DEADLINE_SECONDS for _, kwargs in api.calls)


def test_an_elector_that_ends_any_other_way_stops_the_process(monkeypatch):
    stopped = []
    monkeypatch.setattr(leader, "_lost_leadership", lambda: stopped.append(True))

    class Broken:
        def run(self):
            raise RuntimeError("boom")

    leader._campaign(Broken())
    assert stopped == [True]
