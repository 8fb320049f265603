"""`python -m bluebutton.sandbox.connect`: run the emulated LinuxForHealth connect (see `cli.py`)."""

from bluebutton.sandbox.connect.cli import main

main()
