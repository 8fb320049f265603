"""The Blue Button API versions one deployment speaks side by side, as a request names one.

Tokens, patient ids and claim ids are version-bound (bb2-v3.md §2.5, §3.2), so each grant, token
and pull carries its version; without one, `BLUEBUTTON_CMS_API_VERSION` applies.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator


def _from_text(value: object) -> object:
    # Query strings and environment variables are text; Literal[2, 3] only matches the integers.
    return int(value) if isinstance(value, str) and value.strip() in ("2", "3") else value


ApiVersion = Annotated[Literal[2, 3], BeforeValidator(_from_text)]
