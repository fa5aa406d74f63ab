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


def start_election(name: str, namespace: str, leading: threading.Event, me: str | None = None) -> str:
    """Campaign for the Lease `namespace/name` on a daemon thread; `leading` is set once this process leads."""
    me = me or identity()
    lock = LeaseLock(name, namespace, me)
    lock.api_instance = CoordinationV1Api(load_api_client())  # our credentials, not the client's global default
    config = electionconfig.Config(lock, lease_duration=LEASE_SECONDS, renew_deadline=RENEW_DEADLINE_SECONDS,
                                   retry_period=RETRY_SECONDS, onstarted_leading=leading.set,
                                   onstopped_leading=_lost_leadership)
    threading.Thread(target=leaderelection.LeaderElection(config).run, name="leader-election", daemon=True).start()
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
