"""The console's refusals, within the service's tree (`bluebutton.errors.BlueButtonError`).

BlueButtonError
├── ConsoleSignInError       401  no console session cookie, or an expired or forged one
└── CsrfTokenError           403  a form post without this session's CSRF token
"""

from __future__ import annotations

from bluebutton.errors import BlueButtonError


class ConsoleSignInError(BlueButtonError):
    status_code = 401
    code = "login"


class CsrfTokenError(BlueButtonError):
    status_code = 403
    code = "security"
