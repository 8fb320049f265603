"""What this process must still write once the database answers again, and the database's state.

A run that loses the database cannot end honestly at once, and two of its writes must not be
lost at all: a refresh token CMS just rotated (single-use: losing it ends the grant for good),
and the ledger rows of a Bundle connect already stored (without them the next run sends the
Bundle again). They are kept here, in order, outside the job (procrastinate may stop the worker
when the database goes), and written by `Journal.run` with backoff until the database answers.
A ledger commit is kept until `BLUEBUTTON_SYNC_COMMIT_DEADLINE_SECONDS`, then replaced by an issue
on its run naming the Bundle that may be stored twice. The journal holds ciphertexts, ids and
counts, never FHIR content.

`DatabaseWatch` logs once when the database goes and once when it is back, for every part of the
process (worker supervisor, journal, runs), and tells `/health` since when it is away.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from bluebutton.sync.database import unreachable

logger = logging.getLogger(__name__)

Write = Callable[[AsyncConnection], Awaitable[None]]
FIRST_WAIT_SECONDS = 0.5
MAX_WAIT_SECONDS = 10.0


def backoff(failures: int) -> float:
    """0.5 s doubling up to 10 s, with jitter (many workers must not reconnect in step)."""
    wait = min(MAX_WAIT_SECONDS, FIRST_WAIT_SECONDS * 2 ** min(failures, 10))
    return float(wait * random.uniform(0.5, 1.0))  # noqa: S311 - jitter, not a secret


class DatabaseWatch:
    """The process's view of the database: logged once per change, read by `/health`."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.down_since: float | None = None
        self.back = asyncio.Event()
        self.back.set()

    @property
    def reachable(self) -> bool:
        return self.down_since is None

    def down_for(self) -> float | None:
        return None if self.down_since is None else self._clock() - self.down_since

    def went(self, error: BaseException | str) -> None:
        if self.down_since is not None:
            return
        self.down_since = self._clock()
        self.back.clear()
        cause = error if isinstance(error, str) else type(error).__name__
        logger.error("grant keeping lost its database (%s); it waits and reconnects by itself", cause)

    def answered(self) -> None:
        if self.down_since is None:
            return
        logger.warning("grant keeping's database answers again after %.1f s; resuming", self.down_for())
        self.down_since = None
        self.back.set()


@dataclass
class Pending:
    """One write kept until the database answers. `expires_at` (monotonic) bounds it; past it
    `instead` is kept in its place (or nothing)."""

    what: str
    write: Write
    expires_at: float | None = None
    instead: Callable[[], Pending | None] | None = None
    written: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Journal:
    def __init__(
        self, pool: AsyncConnectionPool, watch: DatabaseWatch, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.pool = pool
        self.watch = watch
        self._clock = clock
        self.pending: list[Pending] = []
        self._wake = asyncio.Event()
        self._settling = asyncio.Lock()  # the writer task and the supervisor settle in turn

    def keep(self, pending: Pending) -> Pending:
        self.pending.append(pending)
        self._wake.set()
        logger.warning("kept for when the database answers: %s", pending.what)
        return pending

    async def written(self, pending: Pending) -> None:
        """Wait until the journal has written it (however long the database is away)."""
        await asyncio.shield(pending.written)

    def _expire(self) -> None:
        now = self._clock()
        kept: list[Pending] = []
        for item in self.pending:
            if item.expires_at is not None and now >= item.expires_at:
                replacement = item.instead() if item.instead else None
                logger.error("gave up waiting to write %s", item.what)
                if not item.written.done():
                    item.written.set_exception(TimeoutError(item.what))
                    item.written.exception()  # retrieved: nobody may be waiting
                if replacement is not None:
                    kept.append(replacement)
            else:
                kept.append(item)
        self.pending = kept

    async def settle(self) -> bool:
        """Write what is kept, in order; True once nothing is left, False if the database is
        still away (the rest stays, in order)."""
        async with self._settling:
            return await self._settle()

    async def _settle(self) -> bool:
        self._expire()
        while self.pending:
            item = self.pending[0]
            try:
                async with self.pool.connection() as connection, connection.transaction():
                    await item.write(connection)
            except Exception as e:
                if not unreachable(e):
                    logger.exception("could not write %s; dropped", item.what)
                    self.pending.pop(0)
                    if not item.written.done():
                        item.written.set_exception(e)
                        item.written.exception()
                    continue
                self.watch.went(e)
                return False
            self.pending.pop(0)
            self.watch.answered()
            if not item.written.done():
                item.written.set_result(None)
            logger.info("wrote %s", item.what)
        return True

    async def run(self) -> None:
        """Write kept items whenever there are some, with backoff while the database is away."""
        failures = 0
        while True:
            await self._wake.wait()
            self._wake.clear()
            while not await self.settle():
                failures += 1
                await asyncio.sleep(backoff(failures))
            failures = 0
