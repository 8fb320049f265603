"""TLS trust, built once per process and shared by every upstream client.

Verification is always on; `BLUEBUTTON_CA_FILE` can only add trust (e.g. connect's mkcert root or
the sandbox CA), never remove it.
"""

from __future__ import annotations

import ssl

import certifi

from bluebutton.settings import Settings


def build_ssl_context(settings: Settings) -> ssl.SSLContext:
    """The system trust store plus certifi's bundle plus `BLUEBUTTON_CA_FILE`, if set."""
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=certifi.where())
    if settings.ca_file is not None:
        context.load_verify_locations(cafile=str(settings.ca_file))
    return context
