"""Operator entry point: `python -m m2f_operator` (the container's command)."""

from __future__ import annotations

import logging
import os
import sys
import threading

import kopf

from m2f_operator import leader
from m2f_operator.settings import OperatorConfig


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print("usage: python -m m2f_operator  (configured by M2F_* environment variables; see docs/operator.md)")
        return 0
    level = getattr(logging, os.environ.get("M2F_LOG_LEVEL", "INFO").upper(), logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = OperatorConfig.from_env()
    import m2f_operator.handlers  # noqa: F401  (registers the handlers)

    if config.leader_election_namespace:
        # Several replicas (the chart's default): only the Lease holder goes on; it exits if it loses the lease.
        leading = threading.Event()
        leader.start_election(config.leader_election_name, config.leader_election_namespace, leading)
        with leader.standby_liveness(config.liveness_port):
            leading.wait()
        logging.getLogger(__name__).info("leading: starting the reconciler")
    # Standalone: kopf's own peering is not needed (the Lease decides who runs), and no peering CRD exists.
    kopf.run(
        standalone=True,
        clusterwide=not config.watch_namespace,
        namespaces=[config.watch_namespace] if config.watch_namespace else (),
        liveness_endpoint=f"http://0.0.0.0:{config.liveness_port}/healthz",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
