"""Leader election on a coordination.k8s.io Lease: one of several operator replicas reconciles, the others wait.

The kubernetes client's elector (client-go's algorithm: a follower takes over once the holder has not renewed
for a whole lease duration, measured on the follower's own clock) runs on a thread. The process reconciles
only once it leads, and exits the moment it stops leading: a replica that lost its lease (a network partition,
an API outage longer than the renew deadline) may no longer act, and its restart makes it a follower again.
While it waits it answers the liveness probe itself (kopf serves it only once running).
"""

from __future__ import annotations

import contextlib
import http.server
import logging
import os
import threading
import uuid
from collections.abc import Iterator

from kubernetes.client import CoordinationV1Api
from kubernetes.client.rest import ApiException
from kubernetes.leaderelection import electionconfig, leaderelection
from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

from m2f_operator.client import load_api_client

log = logging.getLogger(__name__)

# A SIGKILLed leader is replaced within LEASE_SECONDS + RETRY_SECONDS (12 s).
LEASE_SECONDS, RENEW_DEADLINE_SECONDS, RETRY_SECONDS = 10, 7, 2
LOST_LEADERSHIP_EXIT_CODE = 3


def identity() -> str:
    """The pod's name (what `kubectl get lease` shows as the holder) made unique per process."""
    return f"{os.environ.get('HOSTNAME', 'm2f-operator')}_{uuid.uuid4().hex[:8]}"


def _lost_leadership() -> None:
    log.error("lost the leader lease: exiting so that no two replicas reconcile at once")
    logging.shutdown()
    os._exit(LOST_LEADERSHIP_EXIT_CODE)


class _BoundedLeaseApi:
    """The Lease calls with a timeout below the renew deadline: a hung request must fail in time for this
    replica to notice it no longer holds the lease."""

    def __init__(self, api: CoordinationV1Api, timeout: float = RETRY_SECONDS * 2) -> None:
        self._api, self._timeout = api, timeout

    def __getattr__(self, name: str):
        call = getattr(self._api, name)
        return lambda *args, **kwargs: call(*args, _request_timeout=self._timeout, **kwargs)


class _Lock(LeaseLock):
    """The client's LeaseLock answers an unreachable API server (a connection error, a timeout) by raising,
    which would end the elector's thread silently; here it is a failed attempt, retried like any other."""

    def get(self, name, namespace):
        try:
            return super().get(name, namespace)
        except Exception as exc:  # noqa: BLE001 - any failure to read is "not acquired / not renewed"
            log.warning("reading lease %s/%s failed: %s", namespace, name, exc)
            # The elector reads an error's code from its body and logs its reason: an ApiException without a code.
            return False, ApiException(status=0, reason=f"{type(exc).__name__}: {exc}")

    def create(self, name, namespace, election_record):
        return self._attempt("creating", super().create, name, namespace, election_record)

    def update(self, name, namespace, updated_record):
        return self._attempt("renewing", super().update, name, namespace, updated_record)

    @staticmethod
    def _attempt(what: str, call, name, namespace, record) -> bool:
        try:
            return call(name, namespace, record)
        except Exception as exc:  # noqa: BLE001 - any failure to write is "not acquired / not renewed"
            log.warning("%s lease %s/%s failed: %s", what, namespace, name, exc)
            return False


def _campaign(elector: leaderelection.LeaderElection) -> None:
    """The elector returns only after losing the lease (it then calls _lost_leadership); should it ever end
    another way, this process can no longer know whether it leads: it must stop too."""
    try:
        elector.run()
    except BaseException:  # noqa: BLE001
        log.exception("leader election failed")
    _lost_leadership()


def start_election(name: str, namespace: str, leading: threading.Event, me: str | None = None) -> str:
    """Campaign for the Lease `namespace/name` on a daemon thread; `leading` is set once this process leads."""
    me = me or identity()
    lock = _Lock(name, namespace, me)
    lock.api_instance = _BoundedLeaseApi(CoordinationV1Api(load_api_client()))  # our credentials, bounded calls
    config = electionconfig.Config(lock, lease_duration=LEASE_SECONDS, renew_deadline=RENEW_DEADLINE_SECONDS,
                                   retry_period=RETRY_SECONDS, onstarted_leading=leading.set,
                                   onstopped_leading=_lost_leadership)
    elector = leaderelection.LeaderElection(config)
    threading.Thread(target=_campaign, args=(elector,), name="leader-election", daemon=True).start()
    log.info("campaigning for lease %s/%s as %s", namespace, name, me)
    return me


class _Healthz(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        status = 200 if self.path.startswith("/healthz") else 404
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"standby": true}' if status == 200 else b"{}")

    def log_message(self, *_args) -> None:  # probes every few seconds: not worth a log line each
        pass


@contextlib.contextmanager
def standby_liveness(port: int) -> Iterator[None]:
    """/healthz on `port` while waiting for the lease (kopf takes the port over once this process leads)."""
    if not port:
        yield
        return
    server = http.server.ThreadingHTTPServer(("0.0.0.0", port), _Healthz)
    thread = threading.Thread(target=server.serve_forever, name="standby-liveness", daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
