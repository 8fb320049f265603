"""`python -m tests.fhir.holder`: a process holding a started Validator, for the kill test.

Validates a few entries (so the forkserver, the resource tracker and the pool workers all run),
prints `ready`, then waits to be killed.
"""

from __future__ import annotations

import asyncio

from bluebutton.fhir.validator import Validator
from tests.factories import compact, entry_for, make_eob


async def main() -> None:
    async with Validator(2) as validator:
        await validator.validate([compact(entry_for(make_eob(n))) for n in range(30)])
        print("ready", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
