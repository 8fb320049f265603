"""An offline LinuxForHealth connect 0.42.0 (the connector's only sink), as a Starlette app.

Run it with `python -m bluebutton.sandbox.connect` (`--help` lists the flags). Modules:

    app.py        `create_connect_app`: `POST /fhir/{type}`, `/data`, `/status`, the `/_sandbox` controls
    cli.py        the command line (`__main__.py` runs it)
    config.py     `ConnectSandboxConfig` and its flags / `BLUEBUTTON_SANDBOX_CONNECT_*` variables
    contract.py   connect's request parsing, validation texts and the stored envelope
    controls.py   the fault switches and slowapi's fixed-window rate limit
    store.py      the SQLite record log (offsets carry on across restarts)

What is faithful to connect and what deviates is in `app.py`'s docstring. The package imports
nothing on its own: import the module you need.
"""
