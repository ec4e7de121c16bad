"""Sign-in throttling: a pure core (the clock is an argument), used from the event loop only.

At most `max_failures` failed sign-ins per key (user name and client address) within `window_ms`;
past that the key is refused until its oldest failure leaves the window. A success clears the
key. Memory is bounded: past `max_keys` keys, the stalest key is forgotten first.
"""

from __future__ import annotations

from collections import OrderedDict, deque

__all__ = ["LoginThrottle"]


class LoginThrottle:
    def __init__(self, max_failures: int = 5, window_ms: int = 15 * 60_000,
                 max_keys: int = 10_000) -> None:
        if max_failures < 1 or window_ms < 1 or max_keys < 1:
            raise ValueError("max_failures, window_ms and max_keys must be at least 1")
        self.max_failures, self.window_ms, self.max_keys = max_failures, window_ms, max_keys
        self._fails: OrderedDict[tuple[str, str], deque[int]] = OrderedDict()

    def _recent(self, key: tuple[str, str], now_ms: int) -> deque[int] | None:
        q = self._fails.get(key)
        if q is None:
            return None
        while q and q[0] <= now_ms - self.window_ms:
            q.popleft()
        if not q:
            del self._fails[key]
            return None
        return q

    def retry_after_ms(self, key: tuple[str, str], now_ms: int) -> int:
        """0 if a sign-in may be tried now, else how long until it may."""
        q = self._recent(key, now_ms)
        if q is None or len(q) < self.max_failures:
            return 0
        return q[-self.max_failures] + self.window_ms - now_ms

    def failed(self, key: tuple[str, str], now_ms: int) -> None:
        q = self._recent(key, now_ms)
        if q is None:
            q = self._fails[key] = deque(maxlen=self.max_failures)
            while len(self._fails) > self.max_keys:
                self._fails.popitem(last=False)
        self._fails.move_to_end(key)
        q.append(now_ms)

    def succeeded(self, key: tuple[str, str]) -> None:
        self._fails.pop(key, None)
