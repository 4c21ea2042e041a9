"""Response cache for identical non-streaming requests: LRU with a TTL, keyed per tenant.

The tenant is part of the key, so one tenant can never read another's answers. The cache
lives in each worker's memory: with several workers, a repeat may land on a worker that
has not seen it (a miss, never a wrong answer).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any


def cache_key(tenant: str, model: str, strategy: str, body: dict[str, Any]) -> str:
    material = json.dumps(
        [tenant, model, strategy, body.get("messages"), body.get("max_tokens"), body.get("temperature")],
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(material.encode()).hexdigest()


class ResponseCache:
    def __init__(self, max_entries: int, ttl_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.ttl = ttl_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[float, Any]] = OrderedDict()

    def get(self, key: str) -> Any | None:
        with self._lock:
            item = self._entries.get(key)
            if item is None:
                return None
            stored_at, value = item
            if self.clock() - stored_at >= self.ttl:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return value

    def put(self, key: str, value: Any) -> None:
        with self._lock:
            self._entries[key] = (self.clock(), value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
