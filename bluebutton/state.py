"""The typed lifespan state: every resource the app opens at start-up and closes at shutdown."""

from __future__ import annotations

from typing import TypedDict

from bluebutton.cms import CmsClient
from bluebutton.fhir import Validator
from bluebutton.lfh import LfhClient
from bluebutton.oauth import OAuthClient
from bluebutton.pending import PendingStore
from bluebutton.settings import Settings


class State(TypedDict):
    settings: Settings
    cms: CmsClient
    lfh: LfhClient
    validator: Validator
    oauth: OAuthClient
    pending: PendingStore
