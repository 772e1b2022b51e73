"""Shared field types and the envelope every event carries (DESIGN.md, "Topics (contract v1)")."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from orderflow.mailaddr import AddressError, addr_spec

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_EMAIL = re.compile(r"^[^@\s,;<>\"()\[\]\\]+@[^@\s,;<>\"()\[\]\\]+\.[^@\s,;<>\"()\[\]\\]+$")


def _no_control_chars(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters (CR, LF, tab, NUL...)")
    return value


def _one_address(value: str) -> str:
    """The mailer's own parser decides (orderflow.mailaddr): what passes here is what notify can send to."""
    try:
        addr_spec(value, require_dot=True)
    except AddressError:
        raise ValueError("must be one e-mail address (name@domain) that mail can be sent to: no display name, "
                         "spaces, quotes, commas or brackets") from None
    return value


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


Identifier = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[^/\s]+$"), AfterValidator(_no_control_chars)
]
"""Ids that appear in keys (shop, order, cart): no slash, since `shop_id/sku` keys are split on it."""

Sku = Annotated[str, StringConstraints(min_length=1, max_length=128), AfterValidator(_no_control_chars)]
Text = Annotated[str, StringConstraints(max_length=500), AfterValidator(_no_control_chars)]
"""Free text that may end up in a mail header (names, subjects): control characters refused."""
LongText = Annotated[str, StringConstraints(min_length=1, max_length=10_000)]
Email = Annotated[str, StringConstraints(max_length=254), AfterValidator(_one_address)]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
Cents = Annotated[int, Field(ge=0)]
UtcDatetime = Annotated[AwareDatetime, AfterValidator(_utc)]


class Model(BaseModel):
    """Frozen, strict about what it needs, silent about fields it does not know (forward compatibility)."""

    model_config = ConfigDict(frozen=True, extra="ignore", str_strip_whitespace=False)


class Event(Model):
    """The envelope: every event on every topic carries these three fields."""

    event_id: uuid.UUID = Field(description="UUID chosen by the producer and kept when it retries")
    occurred_at: UtcDatetime = Field(description="RFC 3339 timestamp, normalised to UTC")
    shop_id: Identifier


def new_event_id() -> uuid.UUID:
    return uuid.uuid4()


def now() -> datetime:
    return datetime.now(UTC)


def derived_event_id(*parts: object) -> uuid.UUID:
    """A deterministic event id for an event a service emits, so a re-emission after a crash dedupes downstream."""
    return uuid.uuid5(uuid.NAMESPACE_URL, "orderflow:" + "/".join(str(p) for p in parts))
