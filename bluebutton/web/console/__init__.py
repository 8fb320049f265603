"""The operator console at /bluebutton/console: grants, runs and records in server-rendered HTML.

routes.py     the pages and form posts (FastAPI)
session.py    the signed session cookie and CSRF tokens
pages.py      Jinja2 rendering, security headers, view helpers
errors.py     the console's refusals, within the service's error tree
templates/    the Jinja2 templates
"""
