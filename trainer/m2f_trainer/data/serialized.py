"""SerializedList: per-image records packed into one numpy buffer that forked DataLoader workers share."""

from __future__ import annotations

import pickle
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np


class SerializedList(Sequence):
    """A read-only list whose items live pickled in one uint8 array, located by an int64 offsets array.

    A list of Python objects is copied page by page into every forked worker that reads it: reading
    an object updates its reference count (and the garbage collector writes its header), so the
    "shared" pages get written and copy-on-write duplicates them. Two numpy arrays hold no Python
    objects per item, so workers share their pages for good, and they pickle as two flat buffers
    when sent to spawned workers. Each access unpickles a fresh copy of the item (detectron2's
    ``DatasetFromList(serialize=True)``); mutating it does not change the list.
    """

    def __init__(self, items: Iterable[Any]):
        chunks = [pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL) for item in items]
        # ends[i] is where item i stops; item i starts at ends[i - 1] (0 for the first).
        self._ends = np.cumsum(np.fromiter((len(c) for c in chunks), dtype=np.int64, count=len(chunks)))
        self._buffer = np.frombuffer(b"".join(chunks), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, index: int) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        start = int(self._ends[index - 1]) if index else 0
        return pickle.loads(memoryview(self._buffer[start : int(self._ends[index])]))

    def __iter__(self) -> Iterator[Any]:
        return (self[i] for i in range(len(self)))

    @property
    def nbytes(self) -> int:
        """Bytes held by the two arrays (the pickled items and their offsets)."""
        return int(self._buffer.nbytes + self._ends.nbytes)

    def __repr__(self) -> str:
        return f"SerializedList({len(self)} items, {self.nbytes} bytes)"
