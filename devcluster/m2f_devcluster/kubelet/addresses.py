"""Pod IPs that satisfy a real API server while every connection stays on this machine's loopback.

A real endpoints controller rejects loopback pod IPs ("may not be in the loopback range"), so a headless
Service would get no endpoints. Each pod gets an address of its own from 198.18.0.0/15 (RFC 2544's
benchmarking range: never routed, never any real host) for the API to record; nothing connects to it. The
processes themselves see 127.0.0.1 through the downward API, and cluster DNS names are rewritten to
127.0.0.1 (podspec.rewrite_cluster_dns), so rendezvous and metrics traffic stay on loopback.
"""

from __future__ import annotations

import ipaddress

POD_NETWORK = "198.18.0.0/15"


class PodAddresses:
    """One address per pod uid, handed out in order and reused once the pod is deleted."""

    def __init__(self, network: str = POD_NETWORK):
        self._hosts = ipaddress.ip_network(network).hosts()
        self._free: list[str] = []
        self._by_uid: dict[str, str] = {}

    def allocate(self, uid: str) -> str:
        if uid not in self._by_uid:
            self._by_uid[uid] = self._free.pop(0) if self._free else str(next(self._hosts))
        return self._by_uid[uid]

    def release(self, uid: str) -> None:
        address = self._by_uid.pop(uid, None)
        if address is not None:
            self._free.append(address)
