"""The routers. None imports another: what they share is a dependency in `bluebutton.web.deps`."""
