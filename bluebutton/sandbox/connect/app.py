"""An offline LinuxForHealth connect 0.42.0, for the demo, end-to-end tests and the benchmark.

The connector's only sink is connect's `POST /fhir/{resource_type}`. This emulator answers it the way
the real one does (measured and read from source, see /work/shared/reference/lfh-connect.md), error
cases included, because a permissive fake would hide exactly the bugs we need to catch:

- FastAPI 0.78 body parsing: JSON when the content type is missing, `application/json` or
  `application/*+json`; otherwise, or for malformed JSON, an empty body, `null` or a non-object, a
  list-shaped 422; undecodable bytes 400; `/fhir/Bundle/` 307 to `/fhir/Bundle`.
- connect's checks, in order: unknown type 404 `/<type> not found` (case-sensitive, any
  fhir.resources model name), `resourceType` missing or different 422, invalid FHIR **500** with
  pydantic's error text (input values left out).
- Success is 200 with the 17-field envelope; `data` is the body re-serialised as connect does
  (`reserialise.py`: `json.dumps` defaults, decimals as floats, times by `isoformat`, ...), base64;
  `data_record_location` is `FHIR-R4:0:<offset>`; `transmission_attributes` are the headers minus
  `authorization` and `*password*`, `*pwd*`, `*token*`.
- connect's Kafka callback race (§7): with `--null-location-share` (or the `null_location_share`
  and `null_location_next` switches) a stored POST is answered 200 with `status` and
  `data_record_location` null; the record is stored and the answer carries its `uuid`.
- The Kafka record limit (§6): a record needs its JSON plus 36 bytes of Kafka framing within
  `max_record_bytes` (librdkafka's `message.max.bytes`, 1,000,000), which reproduces the measured
  boundary: envelopes of 999,964 bytes stored, 999,965 refused with 500 `Object of type Bundle is not
  JSON serializable`.
- slowapi's rate limit (§6): `rate_limit` requests per second per client IP and path, fixed window,
  counted before anything else (404/422 answers count); over it 429
  `{"error": "Rate limit exceeded: 10 per 1 second"}`, no `Retry-After`.
- `GET /data?dataformat=&partition=&offset=` returns a stored envelope (delivery fields null, as in
  Kafka); a missing or non-integer parameter is a list-shaped 422 (connect types `partition` and
  `offset` as `int`), an unknown record 404. `GET /status` returns a status document. Records live
  in SQLite (`store.py`), so offsets carry on across restarts.

Deviations, all harmless to the connector: FHIR validation uses fhir.resources 8 `R4B` (connect pins
6.4.0, R4), so type names added in R4B are accepted and error texts differ in wording; `data` keeps
the posted key order where connect writes FHIR's (same size), and with validation off it is only
`json.dumps` of the body (no model to type decimals and times); `ipfs_uri` is null
(no IPFS); `/data` takes 5 s and a Kafka error on nothing, here it is an immediate 404; `--no-tls`
serves plain HTTP (connect itself is HTTPS only), for the benchmark.

Test controls, with no auth (the emulator is meant for loopback only), on the service port and on
the control port (`--control-port`), which answers only `/_sandbox/...` and stays open while the
service port is down:

- `GET /_sandbox/faults`, `PUT /_sandbox/faults` with a JSON object; a PUT replaces every switch and
  omitted ones take their start-up value, so `PUT {}` resets:
  `latency_ms` (delay every `POST /fhir` answer; a slow client may give up on a stored record),
  `fail_next` (the next N Kafka writes fail: 500 `Object of type Bundle is not JSON serializable`,
  nothing stored; requests refused before the write do not use one up), `fail_after` (N more
  writes succeed, then all fail until reset; null = off),
  `down` (connect is not there: served on sockets the service port stops listening, so new
  connections are refused, and its open connections are closed (listener.py); a request already
  on its way is dropped without an HTTP response; in-process, with no socket, the app raises
  ConnectionResetError. `PUT {"down": false}` on the control port listens again),
  `validate` (FHIR validation on/off), `rate_limit` (per second, 0 = off) and `throttle_next` (the
  next N `POST /fhir` answers are the limiter's 429, nothing stored, whatever the clock: how tests
  meet a 429 without racing the one-second window).
- `GET /_sandbox/records`: `{"count": n, "records": [{"offset", "uuid", "bytes"}]}`;
  `GET /_sandbox/entries`: the stored entries by `Type/id`, `{"stored", "distinct", "duplicates":
  {ref: n > 1}, "counts": {ref: n}}` (what was stored twice);
  `DELETE /_sandbox/records`: delete them all (`{"deleted": n}`); offsets are never reused.

Run it with `python -m bluebutton.sandbox.connect` (HTTPS with local-certs by default); every flag
can also come from `BLUEBUTTON_SANDBOX_CONNECT_<FLAG>` (e.g. `..._PORT=5001`, `..._NO_TLS=true`).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import anyio.to_thread
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from bluebutton.sandbox.connect.config import KAFKA_RECORD_OVERHEAD, ConnectSandboxConfig
from bluebutton.sandbox.connect.contract import (
    ConnectError,
    connect_data,
    detail,
    encode_data,
    entry_references,
    field_errors,
    is_fhir_type,
    missing,
    read_body_dict,
    stored_envelope,
    transmission_attributes,
)
from bluebutton.sandbox.connect.controls import KAFKA_FAILURE_DETAIL, Faults, FixedWindowLimiter
from bluebutton.sandbox.connect.listener import ServicePort
from bluebutton.sandbox.connect.store import PARTITION, TOPIC, RecordStore

__all__ = ["ConnectSandboxApp", "ConnectSandboxConfig", "create_connect_app"]

Sleep = Callable[[float], Awaitable[None]]
ADMIN_PREFIX = "/_sandbox/"
CONNECT_VERSION = "0.42.0"


class _Sandbox:
    """The emulator's state and endpoints; one per app."""

    def __init__(self, config: ConnectSandboxConfig, clock: Callable[[], float], sleep: Sleep) -> None:
        self.config = config
        self.sleep = sleep
        self.store = RecordStore(config.db)
        self.faults = self._startup_faults()
        self.limiter = FixedWindowLimiter(config.rate_limit, clock)
        self.random = random.Random()  # noqa: S311 - a fault draw, not a secret
        self.port: ServicePort | None = None  # set when served on real sockets (listener.py)

    def _startup_faults(self, **changes: Any) -> Faults:
        start = {
            "validate": self.config.validate,
            "rate_limit": self.config.rate_limit,
            "null_location_share": self.config.null_location_share,
        }
        return Faults.model_validate({**start, **changes})

    def _check_rate(self, request: Request) -> None:
        # slowapi's get_remote_address, and its default-limit scope: the request path.
        client = request.client.host if request.client else "127.0.0.1"
        if not self.limiter.hit(client, request.scope["path"]):
            raise ConnectError(429, {"error": self.limiter.message})

    def _check_throttle(self) -> None:
        if self.faults.throttles():
            raise ConnectError(429, {"error": self.limiter.message})

    async def post_fhir(self, request: Request) -> Response:
        try:
            response: Response = await self._store_fhir(request)
        except ConnectError as e:
            response = JSONResponse(e.content, e.status_code)
        if self.faults.latency_ms:
            await self.sleep(self.faults.latency_ms / 1000)
        return response

    async def _store_fhir(self, request: Request) -> Response:
        started = time.perf_counter()
        self._check_throttle()
        self._check_rate(request)
        resource_type: str = request.path_params["resource_type"]
        body = await read_body_dict(request)  # FastAPI parses the body before connect's route runs
        if not is_fhir_type(resource_type):
            raise detail(404, f"/{resource_type} not found")
        if body.get("resourceType") != resource_type:
            found = body.get("resourceType")
            raise detail(422, f"resource type {found} in request does not match url /{resource_type}")
        validate = self.faults.fhir_validation
        text = await anyio.to_thread.run_sync(lambda: connect_data(resource_type, body, validate=validate))

        created = datetime.now(UTC).replace(microsecond=0).isoformat()
        record_uuid = str(uuid.uuid4())
        envelope = stored_envelope(
            record_uuid=record_uuid,
            lfh_id=self.config.lfh_id,
            resource_type=resource_type,
            created=created,
            data=encode_data(text),
            attributes=transmission_attributes(request),
        )
        record = json.dumps(envelope).encode()  # pydantic v1 `.json()`: default separators
        too_big = len(record) + KAFKA_RECORD_OVERHEAD > self.config.max_record_bytes
        if too_big or self.faults.storage_fails():
            raise detail(500, KAFKA_FAILURE_DETAIL)
        store_started = time.perf_counter()
        references = entry_references(body)
        offset = await anyio.to_thread.run_sync(self.store.append, record_uuid, record, references)
        finished = time.perf_counter()
        located = not self.faults.loses_location(self.random)
        return JSONResponse(
            {
                **envelope,
                # connect's Kafka callback race (lfh-connect.md §7): stored, answered without it.
                "status": "success" if located else None,
                "data_record_location": f"{TOPIC}:{PARTITION}:{offset}" if located else None,
                "elapsed_storage_time": finished - store_started,
                "elapsed_total_time": finished - started,
            }
        )

    async def get_data(self, request: Request) -> Response:
        self._check_rate(request)
        params = request.query_params
        errors: list[dict[str, Any]] = []
        numbers: dict[str, int] = {}
        dataformat = params.get("dataformat")
        if dataformat is None:
            errors.append(missing(["query", "dataformat"]))
        for name in ("partition", "offset"):  # typed `int` in connect's route
            raw = params.get(name)
            if raw is None:
                errors.append(missing(["query", name]))
                continue
            try:
                numbers[name] = int(raw)
            except ValueError:
                msg = "value is not a valid integer"
                errors.append({"loc": ["query", name], "msg": msg, "type": "type_error.integer"})
        if errors:
            raise field_errors(errors)
        offset = numbers["offset"]
        record = None
        if dataformat == TOPIC and numbers["partition"] == PARTITION and offset >= 0:
            record = await anyio.to_thread.run_sync(self.store.get, offset)
        if record is None:
            location = f"{dataformat}:{numbers['partition']}:{offset}"
            raise detail(404, f"Consumer - error: Broker: Offset out of range ({location})")
        return JSONResponse(json.loads(record))

    async def get_status(self, request: Request) -> Response:
        self._check_rate(request)
        started = time.perf_counter()
        status = {
            "application": "bluebutton.sandbox.connect",
            "application_version": CONNECT_VERSION,
            "is_reload_enabled": False,
            "nats_client_status": "CONNECTED",
            "kafka_broker_status": "AVAILABLE",
        }
        return JSONResponse({**status, "status_response_time": time.perf_counter() - started, "metrics": {}})

    async def faults_endpoint(self, request: Request) -> Response:
        if request.method == "PUT":
            try:
                changes = await request.json()
            except ValueError as e:
                raise detail(400, "the body must be a JSON object") from e
            if not isinstance(changes, dict):
                raise detail(400, "the body must be a JSON object")
            was_down = self.faults.down
            try:
                self.faults = self._startup_faults(**changes)
            except ValidationError as e:
                errors = e.errors(include_url=False, include_input=False, include_context=False)
                raise ConnectError(422, {"detail": errors}) from e
            self.limiter.per_second = self.faults.rate_limit
            if self.port is not None and self.faults.down != was_down:
                await self._switch_port(down=self.faults.down)
        return JSONResponse(self.faults.model_dump(by_alias=True))

    async def _switch_port(self, *, down: bool) -> None:
        # Before answering: once the PUT is answered, new connections are refused (or accepted).
        assert self.port is not None
        if down:
            await self.port.close()
            return
        try:
            await self.port.open()
        except OSError as e:
            self.faults.down = True
            raise detail(500, f"cannot listen on port {self.port.port} again: {e}") from e

    async def records_endpoint(self, request: Request) -> Response:
        if request.method == "DELETE":
            deleted = await anyio.to_thread.run_sync(self.store.clear)
            return JSONResponse({"deleted": deleted})
        summaries = await anyio.to_thread.run_sync(self.store.summaries)
        return JSONResponse({"count": len(summaries), "records": [asdict(s) for s in summaries]})

    async def entries_endpoint(self, request: Request) -> Response:
        counts = await anyio.to_thread.run_sync(self.store.entry_counts)
        twice = {reference: n for reference, n in counts.items() if n > 1}
        return JSONResponse(
            {"stored": sum(counts.values()), "distinct": len(counts), "duplicates": twice, "counts": counts}
        )


class ConnectSandboxApp(Starlette):
    """Starlette plus the control port's scope and the `down` switch, both checked before any
    middleware could answer."""

    def __init__(self, sandbox: _Sandbox, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sandbox = sandbox

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] == "http" and not path.startswith(ADMIN_PREFIX):
            port = self.sandbox.port
            if port is not None and port.is_control(scope):
                await JSONResponse({"detail": "Not Found"}, 404)(scope, receive, send)
                return
            if self.sandbox.faults.down:
                # Served on real sockets the port is closed; this is a request that was already
                # on its way, or the in-process app (no socket).
                await _drop_connection(send)
                return
        await super().__call__(scope, receive, send)


async def _drop_connection(send: Send) -> None:
    # ASGI cannot close a socket, but uvicorn's `send` is a method of its per-request cycle, which
    # holds the transport: aborting it drops the connection before a byte of HTTP is written.
    # (uvloop's transports are not asyncio.WriteTransport subclasses, hence the duck typing.)
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if not callable(getattr(transport, "abort", None)):
        raise ConnectionResetError("connect sandbox is down")
    transport.abort()  # type: ignore[union-attr]
    for _ in range(20):  # let connection_lost run, so uvicorn does not try to answer 500
        if getattr(cycle, "disconnected", True):
            break
        await asyncio.sleep(0)


async def _http_exception(request: Request, exc: Exception) -> Response:
    # connect renders every HTTPException as JSON `{"detail": "<str>"}` (405, unknown paths, ...).
    assert isinstance(exc, HTTPException)
    return JSONResponse({"detail": str(exc.detail)}, exc.status_code, headers=exc.headers)


async def _connect_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ConnectError)
    return JSONResponse(exc.content, exc.status_code)


def create_connect_app(
    config: ConnectSandboxConfig,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Sleep = asyncio.sleep,
) -> ConnectSandboxApp:
    """Build the emulator; `clock` drives the rate-limit window and `sleep` the `latency_ms` delay
    (tests pass fakes, so nothing they check depends on this machine's speed)."""
    sandbox = _Sandbox(config, clock, sleep)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            sandbox.store.close()

    routes = [
        Route("/fhir/{resource_type}", sandbox.post_fhir, methods=["POST"]),
        Route("/data", sandbox.get_data, methods=["GET"]),
        Route("/status", sandbox.get_status, methods=["GET"]),
        Route(ADMIN_PREFIX + "faults", sandbox.faults_endpoint, methods=["GET", "PUT"]),
        Route(ADMIN_PREFIX + "records", sandbox.records_endpoint, methods=["GET", "DELETE"]),
        Route(ADMIN_PREFIX + "entries", sandbox.entries_endpoint, methods=["GET"]),
    ]
    handlers = {HTTPException: _http_exception, ConnectError: _connect_error}
    return ConnectSandboxApp(sandbox, routes=routes, exception_handlers=handlers, lifespan=lifespan)
