"""Wrong admin keys, throttled per client: the console's sign-in form and `X-API-Key` alike.

A client (its IP address) may offer `BUDGET` wrong keys in `WINDOW_SECONDS`; past that it gets
429 with `Retry-After` (when its oldest wrong key leaves the window) and its keys are not even
compared. Attempts still being checked count against the budget too, so a burst of concurrent
guesses is refused beyond the budget instead of all being compared at once (the console pauses a
second on a wrong key; 50 parallel guesses used to be answered within that second).

The counts live in this process (one `AdminKeyThrottle` in the app's state): with several
replicas each has its own budget, so a client gets at most `BUDGET` guesses a window per replica.
A 32-character key leaves that far out of reach; what the throttle stops is guessing at line
rate. Behind a proxy every client has the proxy's address, so they share one budget.

BlueButtonError
└── AdminKeyThrottledError   429  throttled   too many wrong admin keys from this client; Retry-After
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from starlette.requests import Request

from bluebutton.errors import BlueButtonError
from bluebutton.sync.errors import AdminKeyError

BUDGET = 10
WINDOW_SECONDS = 60.0
MAX_CLIENTS = 10_000  # tracked addresses; idle ones are dropped past it


class AdminKeyThrottledError(BlueButtonError):
    status_code = 429
    code = "throttled"


@dataclass
class _Client:
    failures: deque[float] = field(default_factory=deque)  # times of wrong keys, oldest first
    checking: int = 0  # attempts admitted and not finished


class Attempt:
    """One admitted key check; say how it ended with `failed()` or `finished()` (once)."""

    def __init__(self, throttle: AdminKeyThrottle, client: str) -> None:
        self._throttle = throttle
        self._client = client
        self._open = True

    def failed(self) -> None:
        self._end(wrong=True)

    def finished(self) -> None:
        self._end(wrong=False)

    def _end(self, *, wrong: bool) -> None:
        if self._open:
            self._open = False
            self._throttle._end(self._client, wrong=wrong)


class AdminKeyThrottle:
    """Per-client budget of wrong admin keys. Thread-safe: sync dependencies run in a thread pool."""

    def __init__(
        self,
        budget: int = BUDGET,
        window: float = WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.budget = budget
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._clients: dict[str, _Client] = {}

    def admit(self, client: str) -> Attempt:
        """Start checking a key from `client`, or refuse with 429 when its budget is spent."""
        with self._lock:
            now = self._clock()
            state = self._clients.get(client)
            if state is None:
                self._prune(now)
                state = self._clients[client] = _Client()
            while state.failures and state.failures[0] <= now - self.window:
                state.failures.popleft()
            if len(state.failures) + state.checking >= self.budget:
                wait = state.failures[0] + self.window - now if state.failures else 1.0
                retry_after = max(1, math.ceil(wait))
                raise AdminKeyThrottledError(
                    f"Too many wrong admin keys from this address: try again in {retry_after} s "
                    f"(at most {self.budget} a {self.window:g} s).",
                    headers={"Retry-After": str(retry_after)},
                )
            state.checking += 1
        return Attempt(self, client)

    def _end(self, client: str, *, wrong: bool) -> None:
        with self._lock:
            state = self._clients.setdefault(client, _Client())
            state.checking = max(0, state.checking - 1)
            if wrong:
                state.failures.append(self._clock())
                while len(state.failures) > self.budget:
                    state.failures.popleft()

    def _prune(self, now: float) -> None:
        # Caller holds the lock.
        if len(self._clients) < MAX_CLIENTS:
            return
        self._clients = {
            key: state
            for key, state in self._clients.items()
            if state.checking or (state.failures and state.failures[-1] > now - self.window)
        }


_CREATE = threading.Lock()


def throttle_of(request: Request) -> AdminKeyThrottle:
    """The app's throttle, made on first use (one per app, so per process)."""
    state = request.app.state
    throttle = getattr(state, "admin_key_throttle", None)
    if throttle is None:
        with _CREATE:
            throttle = getattr(state, "admin_key_throttle", None)
            if throttle is None:
                throttle = state.admin_key_throttle = AdminKeyThrottle()
    assert isinstance(throttle, AdminKeyThrottle)
    return throttle


def client_of(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@contextmanager
def admin_key_guard(request: Request, key: str | None) -> Iterator[None]:
    """Run the `X-API-Key` check (`check_admin_key`) inside: an `AdminKeyError` it raises counts
    as a wrong key; no key offered is no guess, so it is not throttled."""
    if not key:
        yield
        return
    attempt = throttle_of(request).admit(client_of(request))
    try:
        yield
    except AdminKeyError:
        attempt.failed()
        raise
    finally:
        attempt.finished()
