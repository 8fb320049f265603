"""The operator console at /bluebutton/console: grants, runs and records in server-rendered HTML.

routes.py     the pages and form posts (FastAPI)
session.py    the signed session cookie and CSRF tokens
pages.py      view helpers (days left, run totals); rendering is bluebutton.web.pages
errors.py     the console's refusals, within the service's error tree
(its templates: bluebutton/web/templates/console/)
"""
