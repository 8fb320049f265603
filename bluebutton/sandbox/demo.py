"""`./scripts/run [flags]` (or `pipenv run demo`): the whole product offline — emulated CMS,
emulated connect and the connector.

Everything listens on localhost over HTTPS with the `local-certs` CA; Ctrl-C stops all three. The
ports are checked before anything starts: a busy one is named and the demo exits 1.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from bluebutton.sandbox.stack import CA_FILE, ROOT, PortBusy, StackConfig, start_stack

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
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bluebutton.sandbox.demo", description=__doc__)
    parser.add_argument("--port", type=int, default=5200, help="connector port (default 5200)")
    parser.add_argument("--cms-port", type=int, default=5300, help="emulated CMS port (default 5300)")
    parser.add_argument("--connect-port", type=int, default=5000, help="emulated connect port (default 5000)")
    parser.add_argument(
        "--db", type=Path, default=ROOT / "connect-sandbox.sqlite3", help="connect's record store"
    )
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stack = start_stack(
            StackConfig(
                cms_port=args.cms_port,
                connect_port=args.connect_port,
                connector_port=args.port,
                connect_db=args.db,
            )
        )
    except PortBusy as e:
        print(
            f"demo: {e}. Is the demo already running? Stop it, or pick other ports "
            "(--port, --cms-port, --connect-port; --help lists them).",
            file=sys.stderr,
        )
        return 1
    except RuntimeError as e:  # a child exited or never answered; its output is above
        print(f"demo: could not start: {e}", file=sys.stderr)
        return 1
    try:
        print(
            BANNER.format(
                connector=stack.connector_url,
                cms=stack.cms_url,
                connect=stack.connect_url,
                db=stack.connect_db,
                ca=CA_FILE,
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
        stack.stop()
        print("demo: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
