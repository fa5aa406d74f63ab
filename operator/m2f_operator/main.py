"""Operator entry point: `python -m m2f_operator` (the container's command)."""

from __future__ import annotations

import logging
import os
import sys

import kopf

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

    # One replica with the Recreate strategy: standalone, no peering CRD needed.
    kopf.run(
        standalone=True,
        clusterwide=not config.watch_namespace,
        namespaces=[config.watch_namespace] if config.watch_namespace else (),
        liveness_endpoint=f"http://0.0.0.0:{config.liveness_port}/healthz",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
