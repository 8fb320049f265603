"""Console sessions and sign-in forms listed on the server, so a signed cookie alone is not enough.

The cookie is still signed (`session.py`), and its id must also be listed here: signing out
removes it, so a stolen copy of the cookie is dead from then on, and a sign-in form's id is taken
(removed) by the one sign-in it serves, so its cookie and CSRF token cannot be replayed. Entries
expire with their cookie.

Where the list lives follows `BLUEBUTTON_STATE_STORE`, like pending authorizations: `memory` for
one process (a restart signs everyone out), Redis when several replicas share the console
(`SET ... EX`, `EXISTS`, and `DEL` whose count makes taking a form atomic across replicas). The
memory store keeps at most `MAX_FORMS` sign-in forms (anyone can ask for the form), dropping the
oldest.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Literal, Protocol

import redis.asyncio as aioredis

Kind = Literal["session", "sign-in"]
MAX_FORMS = 10_000
MAX_SESSIONS = 10_000


class ConsoleSessions(Protocol):
    async def add(self, kind: Kind, entry_id: str, ttl_seconds: int) -> None: ...

    async def alive(self, kind: Kind, entry_id: str) -> bool: ...

    async def take(self, kind: Kind, entry_id: str) -> bool:
        """Remove the entry; True if it was listed (and not expired)."""
        ...

    async def aclose(self) -> None: ...


class MemoryConsoleSessions:
    """One process; no await between reading and changing an entry, so taking is atomic."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries: dict[Kind, OrderedDict[str, float]] = {
            "session": OrderedDict(),
            "sign-in": OrderedDict(),
        }

    async def add(self, kind: Kind, entry_id: str, ttl_seconds: int) -> None:
        entries = self._entries[kind]
        now = self._clock()
        while entries and next(iter(entries.values())) <= now:
            entries.popitem(last=False)  # same lifetime for all of a kind: the oldest expire first
        if len(entries) >= (MAX_FORMS if kind == "sign-in" else MAX_SESSIONS):
            entries.popitem(last=False)
        entries[entry_id] = now + ttl_seconds

    async def alive(self, kind: Kind, entry_id: str) -> bool:
        expires = self._entries[kind].get(entry_id)
        return expires is not None and self._clock() < expires

    async def take(self, kind: Kind, entry_id: str) -> bool:
        expires = self._entries[kind].pop(entry_id, None)
        return expires is not None and self._clock() < expires

    async def aclose(self) -> None:
        return None


class RedisConsoleSessions:
    """Shared by replicas; Redis expires the entries."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client

    @staticmethod
    def _key(kind: Kind, entry_id: str) -> str:
        return f"bluebutton:console:{kind}:{entry_id}"

    async def add(self, kind: Kind, entry_id: str, ttl_seconds: int) -> None:
        await self.client.set(self._key(kind, entry_id), b"1", ex=ttl_seconds)

    async def alive(self, kind: Kind, entry_id: str) -> bool:
        return bool(await self.client.exists(self._key(kind, entry_id)))

    async def take(self, kind: Kind, entry_id: str) -> bool:
        return bool(await self.client.delete(self._key(kind, entry_id)))

    async def aclose(self) -> None:
        pass  # the client is the composition root's, shared with the other stores


def open_console_sessions(client: aioredis.Redis | None) -> ConsoleSessions:
    """On the composition root's one Redis client when `BLUEBUTTON_STATE_STORE` names Redis."""
    if client is None:
        return MemoryConsoleSessions()
    return RedisConsoleSessions(client)
