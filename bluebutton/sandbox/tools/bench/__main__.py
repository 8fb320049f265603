"""`python -m bluebutton.sandbox.tools.bench [sync] [flags]` (`pipenv run bench`)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    # Each benchmark imports only its own modules: both report this process's peak RSS.
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["sync"]:  # `pipenv run bench sync`: grant keeping at scale
        from bluebutton.sandbox.tools.bench import sync

        return sync.main(argv[1:])
    from bluebutton.sandbox.tools.bench import pull

    return pull.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
