"""`python -m bluebutton.sandbox.cms`: run the emulated Blue Button API (see `cli.py`)."""

from bluebutton.sandbox.cms.cli import main

main()
