"""`./scripts/run [flags]` (or `pipenv run demo`): the whole product offline — emulated CMS,
emulated connect, the connector with grant keeping on an embedded PostgreSQL, and a sync worker.

Everything listens on localhost over HTTPS with the `local-certs` CA; Ctrl-C stops it all. The
ports are checked before anything starts: a busy one is named and the demo exits 1. The database
(`<data dir>/postgres/`), the operator key, the token key and the emulated CMS's state (its tokens,
grants, clock and added claims: `cms-state.json`) live under `--data-dir` (`.data/`, ignored by
git), in files only their owner can read, so kept grants go on refreshing after a restart. One
demo at a time uses a data directory (`demo.lock`): a second is refused before it starts anything.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import secrets
import signal
import stat
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from bluebutton.sandbox.tools.stack import (
    CA_FILE,
    ROOT,
    PortBusy,
    StackConfig,
    check_ports_free,
    configured_ports,
    start_stack,
)
from bluebutton.sync.crypto import new_key

ADMIN_KEY_FILE = "admin-key"
TOKEN_KEYS_FILE = "token-keys"  # noqa: S105 - a file name, not a secret
CMS_STATE_FILE = "cms-state.json"
LOCK_FILE = "demo.lock"

BANNER = """
bluebutton offline demo is running (Ctrl-C stops it)

  connector (Swagger UI)   {connector}/docs
  emulated Blue Button     {cms}          (client id bluebutton-sandbox-client)
  emulated connect         {connect}      (records in {db})
  trust this CA            {ca}

Next steps
  1. Open {connector}/bluebutton/authorize in a browser (trust the CA above, or accept the warning).
  2. Log in as BBUser00042 / PW00042!  (any BBUser00000-BBUser29999, password PW + digits + !),
     and choose what to share.
  3. Copy the access token from the page you land on.
  4. In {connector}/docs click Authorize, paste the token, then run
     GET /bluebutton/fhir with resource_type=ExplanationOfBenefit.
  5. Read a stored record back:
     curl --cacert {ca} "{connect}/data?dataformat=FHIR-R4&partition=0&offset=0"

Or without a browser (prints the token JSON; README "With curl" goes on from there):
  ./scripts/run login BBUser00042 --connector {connector}

Try Blue Button v3 beside v2 (pilot users BBUser09001-BBUser09005, e.g. BBUser09001 / PW09001!):
  open {connector}/bluebutton/authorize?version=3 (the consent has the SAMHSA box, unticked), or
  ./scripts/run login BBUser09001 --api-version 3 --connector {connector}
  then GET /bluebutton/fhir with resource_type=ExplanationOfBenefit and version=3.

Keep data current (PostgreSQL in {pgdata}, {workers} sync worker(s))
  The operator key is in {key_file} (only you can read it); Swagger's Authorize takes it as AdminApiKey.
  In a shell:  KEY=$(cat {key_file})
  1. Enrol: open {connector}/bluebutton/authorize?sync=true in a browser, or
       ./scripts/run login BBUser00042 --sync --connector {connector}
     (prints grant_id and the first run's run_id; the worker runs it at once)
  2. List grants:
       curl --cacert {ca} -H "X-API-Key: $KEY" {connector}/bluebutton/grants
  3. Watch a grant's runs (newest first), or one run:
       curl --cacert {ca} -H "X-API-Key: $KEY" {connector}/bluebutton/grants/GRANT_ID/runs
       curl --cacert {ca} -H "X-API-Key: $KEY" {connector}/bluebutton/runs/RUN_ID
  4. Let a week pass on the emulated CMS (new claims arrive), then sync now; only they are sent:
       curl --cacert {ca} -X POST -d '{{"advance_seconds": 604800}}' {cms}/_sandbox/clock
       curl --cacert {ca} -X POST -H "X-API-Key: $KEY" {connector}/bluebutton/grants/GRANT_ID/sync
"""


class DataDirBusy(RuntimeError):
    """Another demo holds the data directory: two would share one PostgreSQL and job queue, and
    each one's worker would run the other's syncs against the wrong emulated CMS."""


def lock_data_dir(data_dir: Path) -> int:
    """Hold `<data dir>/demo.lock` (flock) for this process's life; its descriptor, left open.

    The kernel drops the lock when the process ends however it ends, so a killed demo never
    leaves a stale lock. The file holds the holder's pid, for the refusal message."""
    data_dir.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(descriptor, 32).decode("ascii", "replace").strip() or "unknown"
        os.close(descriptor)
        raise DataDirBusy(
            f"another demo (pid {holder}) is using {data_dir}; stop it, or give this one its own "
            "--data-dir (and --db)"
        ) from None
    os.ftruncate(descriptor, 0)
    os.write(descriptor, f"{os.getpid()}\n".encode("ascii"))
    return descriptor


class SecretFileError(RuntimeError):
    """A key file others can read, or one that cannot be read or written."""


def kept_secret(path: Path, make: Callable[[], str]) -> str:
    """The secret in `path`, created (mode 0600) on first use; refused if group or others may read it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise SecretFileError(
                f"{path} is readable by others (mode {mode:04o}): run 'chmod 600 {path}', or delete it "
                "to get a new one"
            ) from None
        value = path.read_text(encoding="ascii").strip()
        if not value:
            raise SecretFileError(f"{path} is empty: delete it to get a new one") from None
        return value
    value = make()
    with os.fdopen(descriptor, "w", encoding="ascii") as out:
        out.write(value + "\n")
    return value


def sync_env(data_dir: Path) -> dict[str, str]:
    """Grant keeping for the connector and its workers: embedded PostgreSQL, keys kept in files."""
    return {
        "BLUEBUTTON_DATABASE_URL": "embedded",
        "BLUEBUTTON_EMBEDDED_DATABASE_DIR": str(data_dir / "postgres"),
        "BLUEBUTTON_TOKEN_KEYS": kept_secret(data_dir / TOKEN_KEYS_FILE, new_key),
        "BLUEBUTTON_ADMIN_API_KEY": kept_secret(data_dir / ADMIN_KEY_FILE, lambda: secrets.token_urlsafe(32)),
        "BLUEBUTTON_SYNC_WORKER": "off",  # the standalone workers run the jobs
    }


def _interrupt_once(signum: int, frame: object) -> None:
    """Ctrl-C: stop, and ignore the next ones, which would cut the stop short (in `start_stack`'s
    clean-up as well as ours) and leave a child or the embedded PostgreSQL running."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bluebutton.sandbox.tools.demo", description=__doc__)
    parser.add_argument("--port", type=int, default=5200, help="connector port (default 5200)")
    parser.add_argument("--cms-port", type=int, default=5300, help="emulated CMS port (default 5300)")
    parser.add_argument("--connect-port", type=int, default=5000, help="emulated connect port (default 5000)")
    parser.add_argument(
        "--db", type=Path, default=ROOT / "connect-sandbox.sqlite3", help="connect's record store"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=ROOT / ".data",
        help="grant keeping's PostgreSQL (postgres/), key files, the emulated CMS's state; one demo at a "
        "time (default .data)",
    )
    parser.add_argument("--workers", type=int, default=1, help="standalone sync workers (default 1)")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show the INFO logs of the embedded PostgreSQL (initdb), the job engine (every job) and "
        "the servers",
    )
    args = parser.parse_args(argv)
    if args.workers < 0:
        parser.error("--workers must not be negative")
    data_dir = args.data_dir.resolve()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, _interrupt_once)
    config = StackConfig(
        cms_port=args.cms_port,
        connect_port=args.connect_port,
        connector_port=args.port,
        connect_db=args.db,
        workers=args.workers,
        cms_args=["--state", str(data_dir / CMS_STATE_FILE)],
        quiet=not args.verbose,
    )
    try:
        check_ports_free(configured_ports(config))  # before any key file is written
        lock_data_dir(data_dir)  # before anything uses it; held until we exit
        config.connector_env = sync_env(data_dir)
        stack = start_stack(config)
    except PortBusy as e:
        print(
            f"demo: {e}. Is the demo already running? Stop it, or pick other ports "
            "(--port, --cms-port, --connect-port; --help lists them).",
            file=sys.stderr,
        )
        return 1
    except (DataDirBusy, SecretFileError, OSError) as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    except RuntimeError as e:  # a child exited or never answered; its output is above
        print(f"demo: could not start: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C while starting: `start_stack` stopped what it had started
        print("demo: stopped", flush=True)
        return 0
    try:
        print(
            BANNER.format(
                connector=stack.connector_url,
                cms=stack.cms_url,
                connect=stack.connect_url,
                db=stack.connect_db,
                ca=CA_FILE,
                pgdata=data_dir / "postgres",
                workers=args.workers,
                key_file=data_dir / ADMIN_KEY_FILE,
            ),
            flush=True,
        )
        while not stop.is_set():
            if any(p.poll() is not None for p in stack.processes.values()):
                print("demo: a process exited; stopping the others", file=sys.stderr)
                return 1
            stop.wait(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a signal now must not cut the stop short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
        print("demo: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
