"""Watch streams: events fanned out to open watches, with selector transitions as the watch cache does."""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass, field

from m2f_devcluster.emulator.resources import ResourceType
from m2f_devcluster.emulator.selectors import Predicate


@dataclass(frozen=True)
class WatchEvent:
    revision: int
    storage_key: tuple[str, str]
    type: str  # ADDED / MODIFIED / DELETED
    obj: dict
    old: dict | None = None


@dataclass(eq=False)
class Watcher:
    """One open watch: what it selects and the queue its events (dicts, or None at the end) go to."""

    rtype: ResourceType
    namespace: str | None
    label_selector: Predicate
    field_selector: Predicate
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)

    def offer(self, event: WatchEvent) -> None:
        if event.storage_key != self.rtype.storage_key:
            return
        if self.namespace is not None and event.obj["metadata"].get("namespace") != self.namespace:
            return
        # Like the watch cache: an object moving into / out of the selection is ADDED / DELETED.
        now_selected = self._selects(event.obj)
        was_selected = event.old is not None and self._selects(event.old)
        if event.type == "MODIFIED" and event.old is not None:
            kind = ("MODIFIED" if now_selected and was_selected else "ADDED" if now_selected
                    else "DELETED" if was_selected else None)
        else:
            kind = event.type if now_selected else None
        if kind is not None:
            self.queue.put_nowait({"type": kind, "object": self._as_served(event.obj)})

    def _selects(self, obj: dict) -> bool:
        return self.label_selector(obj) and self.field_selector(obj)

    def _as_served(self, obj: dict) -> dict:
        served = copy.deepcopy(obj)
        served["apiVersion"] = self.rtype.api_version
        return served
