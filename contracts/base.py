"""Shared field types and the envelope every event carries (DESIGN.md, "Topics (contract v1)")."""

from __future__ import annotations

import functools
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints
from pydantic_core import PydanticCustomError

from orderflow.mailaddr import AddressError, addr_spec

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_BUT_LINES = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

MAX_INT = 10**12
"""Upper bound of every integer field without a tighter one of its own (money in cents, stock counts, deduction
lines): 10^12 cents is ten billion in the currency's unit, far above any order, and far inside PostgreSQL's bigint
(9.2 * 10^18), so a number the contract accepts is one a bigint column can store. (Quantities: le=100_000.)"""

EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
MAX_AHEAD = timedelta(hours=24)
"""Every timestamp of every event must be between EARLIEST and now + MAX_AHEAD. The lower bound is fixed, not relative
to now, so an event valid when it was produced stays valid when it is replayed years later."""
_WHEN_BOUND = "must be between 2000-01-01T00:00:00Z and 24 h from now"
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


def _no_control_chars_but_lines(value: str) -> str:
    if _CONTROL_BUT_LINES.search(value):
        raise ValueError("must not contain control characters other than tab, CR and LF (NUL...)")
    return value


_ceiling = EARLIEST
"""now + MAX_AHEAD as last computed: a lower bound of the true ceiling (time only moves on), so a timestamp below it
is accepted without reading the clock, and only one above it reads the clock again (~0.2 µs saved per timestamp)."""


def _utc(value: datetime) -> datetime:
    """Normalised to UTC, and bounded: 9999-12-31T23:59:59-01:00 has no UTC form (OverflowError) and a date far from
    now is a producer's bug, refused with the bound in the message rather than stored."""
    global _ceiling
    try:
        utc = value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise PydanticCustomError("datetime_out_of_range", _WHEN_BOUND) from None
    if utc < EARLIEST:
        raise PydanticCustomError("datetime_out_of_range", _WHEN_BOUND)
    if utc > _ceiling:
        _ceiling = datetime.now(UTC) + MAX_AHEAD
        if utc > _ceiling:
            raise PydanticCustomError("datetime_out_of_range", _WHEN_BOUND)
    return utc


def _bcp47_case(tag: str) -> str:
    """RFC 5646's recommended casing: language lower, script title, region upper (`zh-hant-tw` -> `zh-Hant-TW`)."""
    parts = tag.split("-")
    out = [parts[0].lower()]
    for part in parts[1:]:
        if len(part) == 4 and part.isalpha():
            out.append(part.title())
        elif (len(part) == 2 and part.isalpha()) or (len(part) == 3 and part.isdigit()):
            out.append(part.upper())
        else:
            out.append(part.lower())
    return "-".join(out)


@functools.lru_cache(maxsize=1024)
def _babel_knows(tag: str) -> bool:
    """Whether Babel (CLDR) has data for the tag; cached, since a worker sees few distinct locales. Babel is imported
    here, not at module load: `import contracts` stays light for tools that never read a locale."""
    from babel import Locale

    try:
        Locale.parse(tag, sep="-")
    except Exception:  # noqa: BLE001 - UnknownLocaleError is not a ValueError; any failure means Babel cannot use it
        return False
    return True


def _known_locale(value: str) -> str:
    tag = _bcp47_case(value)
    if not _babel_knows(tag):
        raise ValueError("must be a BCP 47 language tag with locale data (Babel/CLDR), e.g. fr, fr-FR, zh-Hant-TW")
    return tag


_NOT_ISO_3166_1 = frozenset({"AC", "CP", "CQ", "DG", "EA", "EU", "EZ", "IC", "QO", "TA", "UN", "XA", "XB", "XK", "ZZ"})
"""Two-letter CLDR territories that are not assigned ISO 3166-1 alpha-2 codes: exceptionally reserved (AC, CP, DG,
EA, EU, EZ, IC, TA, UN), user-assigned (CQ, QO, XA, XB, XK) and unknown (ZZ)."""


@functools.cache
def iso_countries() -> frozenset[str]:
    """The ISO 3166-1 alpha-2 codes (249 in CLDR 47), from Babel's CLDR territory data."""
    from babel import Locale

    return frozenset(code for code in Locale("en").territories
                     if len(code) == 2 and code.isalpha() and code.isupper()) - _NOT_ISO_3166_1


def _iso_country(value: str) -> str:
    if value not in iso_countries():
        raise ValueError("must be an ISO 3166-1 alpha-2 country code (FR, GB, US...)")
    return value


Identifier = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[^/\s]+$"), AfterValidator(_no_control_chars)
]
"""Ids that appear in keys (shop, order, cart): no slash, since `shop_id/sku` keys are split on it."""

Sku = Annotated[str, StringConstraints(min_length=1, max_length=128), AfterValidator(_no_control_chars)]
Text = Annotated[str, StringConstraints(max_length=500), AfterValidator(_no_control_chars)]
"""Free text that may end up in a mail header (names, subjects): control characters refused."""
LongText = Annotated[
    str, StringConstraints(min_length=1, max_length=10_000), AfterValidator(_no_control_chars_but_lines)
]
"""Free text of several lines (a merchant's message): no NUL or other control character PostgreSQL or a mail body
would choke on."""
Url = Annotated[str, StringConstraints(max_length=2048), AfterValidator(_no_control_chars)]
Email = Annotated[str, StringConstraints(max_length=254), AfterValidator(_one_address)]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
Cents = Annotated[int, Field(ge=0, le=MAX_INT)]
UtcDatetime = Annotated[AwareDatetime, AfterValidator(_utc)]
"""An RFC 3339 timestamp with its offset, normalised to UTC, between 2000-01-01T00:00:00Z and 24 h from now."""
Note = Annotated[str, StringConstraints(max_length=2_000), AfterValidator(_no_control_chars_but_lines)]
"""A customer's free text of several lines (an order's note): tab, CR and LF kept, other control characters refused."""
LocaleTag = Annotated[
    str, StringConstraints(min_length=2, max_length=35, pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8}){0,5}$"),
    AfterValidator(_known_locale),
]
"""A BCP 47 language tag (`fr`, `fr-FR`, `zh-Hant-TW`) that Babel has locale data for, normalised to RFC 5646's
casing (`FR-fr` is read as `fr-FR`). Only hyphens: `fr_FR` is a POSIX name, not BCP 47."""
Country = Annotated[
    str, StringConstraints(pattern=r"^[A-Z]{2}$"), AfterValidator(_iso_country),
    Field(description="ISO 3166-1 alpha-2 country code, upper case"),
]
"""An ISO 3166-1 alpha-2 code, upper case: `GB`, not `UK` or `gb`."""


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
