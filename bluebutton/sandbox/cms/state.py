"""The emulator's state in a file, so a restart keeps what CMS keeps across its own restarts.

CMS never forgets a grant or a refresh token because a server restarted; an emulator that did
would revoke, on the demo's next start, every grant the connector keeps. With a state path
(`--state`; the demo gives `<data dir>/cms-state.json`) the emulator keeps there:

- its OAuth state (`tokens.TokenStore`): pending authorizations, codes, grants, access and
  refresh tokens, and the access-token lifetime an admin call set;
- the emulated clock's offset and the start of the weekly claims schedule on that clock, so the
  weeks already arrived stay arrived (`schedule.py`);
- the claims added or changed through the admin API (`data.CmsDataset.kept`).

Faults and request counts are not kept: a restart starts with the configured faults.

The file is JSON, replaced atomically (a temporary file, fsync, rename) before any response
starts whose request changed the state: a client never holds a token the file lacks, and a stop
at any moment leaves the old file or the new one, never half of one. It holds the emulator's
tokens (which open nothing but the emulator), so it is created readable by its owner only.
Without a state path everything stays in memory, as before.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, get_type_hints

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bluebutton.sandbox.cms.clock import EmulatedClock
from bluebutton.sandbox.cms.data import CmsDataset
from bluebutton.sandbox.cms.tokens import (
    AccessToken,
    AuthorizationCode,
    Grant,
    PendingAuthorization,
    RefreshToken,
    TokenStore,
)

FORMAT: Final = 1  # bumped when the layout changes; an older file is refused, not misread

# TokenStore's tables and the record each holds.
_TABLES: Final[dict[str, type[Any]]] = {
    "pending": PendingAuthorization,
    "codes": AuthorizationCode,
    "grants": Grant,
    "access": AccessToken,
    "refresh": RefreshToken,
}


class StateFileError(RuntimeError):
    """The state file cannot be read or written, or is not one this emulator wrote."""


def snapshot(tokens: TokenStore, clock: EmulatedClock, epoch: float, dataset: CmsDataset) -> bytes:
    """Everything a restart must keep, as JSON bytes (equal bytes: nothing changed)."""
    tables = {
        name: [[key, dataclasses.asdict(record)] for key, record in getattr(tokens, name).items()]
        for name in _TABLES
    }
    state = {
        "format": FORMAT,
        "clock_offset": clock.offset,
        "schedule_epoch": epoch,
        "access_token_seconds": tokens.access_token_seconds,
        "tokens": tables,
        "claims": dataset.kept(),
    }
    return orjson.dumps(state, option=orjson.OPT_NON_STR_KEYS)


def save_state(
    state_file: StateFile, tokens: TokenStore, clock: EmulatedClock, epoch: float, dataset: CmsDataset
) -> None:
    """Write the state if it changed since the last write (`StateMiddleware`'s `save`)."""
    state_file.save(snapshot(tokens, clock, epoch, dataset))


def from_json(kind: type[Any], fields: dict[str, Any]) -> Any:
    """A record of dataclass `kind` from its `dataclasses.asdict` form read back from JSON: lists
    become tuples again (scopes), and a field declared as a dataclass (a token's consent, say) is
    built from its dict, so records gain fields without this module changing."""
    hints = get_type_hints(kind)
    values = {}
    for name, value in fields.items():
        hint = hints.get(name)
        if isinstance(value, dict) and isinstance(hint, type) and dataclasses.is_dataclass(hint):
            values[name] = from_json(hint, value)
        else:
            values[name] = tuple(value) if isinstance(value, list) else value
    return kind(**values)


def _key(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def restore(state: dict[str, Any], tokens: TokenStore, clock: EmulatedClock, dataset: CmsDataset) -> float:
    """Put a loaded state back; returns the schedule's epoch. Raises `StateFileError` if malformed."""
    try:
        if state.get("format") != FORMAT:
            raise StateFileError(f"format {state.get('format')!r}, expected {FORMAT}")
        loaded = {
            name: {_key(key): from_json(kind, fields) for key, fields in state["tokens"][name]}
            for name, kind in _TABLES.items()
        }
        offset = float(state["clock_offset"])
        epoch = float(state["schedule_epoch"])
        lifetime = int(state["access_token_seconds"])
        dataset.restore_kept(state["claims"])
    except (KeyError, TypeError, ValueError) as e:
        raise StateFileError(f"unexpected content ({type(e).__name__}: {e})") from e
    for name, table in loaded.items():
        getattr(tokens, name).clear()
        getattr(tokens, name).update(table)
    tokens.access_token_seconds = lifetime
    clock.offset = offset
    return epoch


class StateFile:
    """One JSON file, read once at start and replaced atomically when the state changed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._written: bytes | None = None

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when there is no file yet."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StateFileError(f"cannot be read ({e.strerror})") from e
        try:
            state = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise StateFileError(f"not JSON ({e})") from e
        if not isinstance(state, dict):
            raise StateFileError("not a JSON object")
        self._written = data
        return state

    def save(self, data: bytes) -> None:
        """Replace the file with `data` unless it already holds it."""
        if data == self._written:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(descriptor, "wb") as out:  # mkstemp creates it 0600
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        self._written = data


def reads_data(scope: Scope) -> bool:
    """A FHIR read: it changes no kept state, and it is the hot path (a snapshot of 1,000 token
    pairs takes about 50 ms), so it is not saved after."""
    return scope["method"] in ("GET", "HEAD") and "/fhir/" in scope["path"]


class StateMiddleware:
    """Saves the state before a response starts (and after a request that sent none)."""

    def __init__(self, app: ASGIApp, save: Callable[[], None]) -> None:
        self.app = app
        self.save = save

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or reads_data(scope):
            await self.app(scope, receive, send)
            return

        async def send_after_saving(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.save()
            await send(message)

        try:
            await self.app(scope, receive, send_after_saving)
        finally:
            self.save()
