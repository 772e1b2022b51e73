"""Languages of the mails and the back office: gettext catalogs (Babel) and money and dates per locale (CLDR).

One catalog for the whole project, `orderflow/locale/<language>/LC_MESSAGES/messages.po`, holding the texts of the
templates (`_()`, `{% trans %}`) and of the Python sources (`N_()`) that `orderflow/locale/babel.cfg` maps.
`python -m orderflow.i18n` extracts them again and merges them into each catalog (new texts arrive untranslated,
old ones are kept); `tests/unit/test_i18n.py` fails while any text lacks a translation. The message ids are the
English texts, so English needs no catalog. The `.po` files are the only thing committed: a catalog is compiled in
memory the first time its language is asked for, so a clean clone runs without a build step and no compiled file can
fall behind its source.

A locale is chosen per mail or page: the first of the given BCP 47 tags (the order's own `locale` for the customer's
mails, then the shop's) whose language has a catalog; English otherwise. Money and dates use the full tag (`fr-CH`
groups digits differently from `fr-FR`); the texts use its language.
"""

from __future__ import annotations

import gettext
import io
import sys
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache, lru_cache
from pathlib import Path

import jinja2
from babel import Locale, UnknownLocaleError
from babel.dates import format_skeleton
from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po, write_po
from babel.numbers import format_currency, get_currency_precision
from babel.support import Translations

LOCALE_DIR = Path(__file__).parent / "locale"
SOURCE_ROOT = Path(__file__).parent.parent
"""The checkout the sources are extracted from: `orderflow/` and `services/` (orderflow/locale/babel.cfg)."""
DOMAIN = "messages"
DEFAULT_LANGUAGE = "en"
LANGUAGES = ("en", "fr")
"""Languages the mails and pages are written in; each but English has a catalog under LOCALE_DIR."""


def N_(message: str) -> str:
    """Marks a text for extraction where it is defined (a table of labels); it is translated where it is shown."""
    return message


def choose(*tags: str | None) -> Locale:
    """The first tag (BCP 47, `fr-FR`, or POSIX, `fr_FR`) whose language has a catalog; English otherwise."""
    for tag in tags:
        if not tag:
            continue
        try:
            locale = Locale.parse(tag.replace("-", "_"))
        except (ValueError, UnknownLocaleError):
            continue
        if locale.language in LANGUAGES:
            return locale
    return Locale.parse(DEFAULT_LANGUAGE)


def catalog_path(language: str) -> Path:
    return LOCALE_DIR / language / "LC_MESSAGES" / f"{DOMAIN}.po"


@cache
def translations(language: str) -> gettext.NullTranslations:
    """The language's catalog compiled from its `.po` (once per process); English is the message ids themselves."""
    if language == DEFAULT_LANGUAGE or language not in LANGUAGES:
        return gettext.NullTranslations()
    with catalog_path(language).open("rb") as po:
        catalog = read_po(po, locale=language, domain=DOMAIN)
    compiled = io.BytesIO()
    write_mo(compiled, catalog)
    compiled.seek(0)
    return Translations(compiled, domain=DOMAIN)


def gettext_for(locale: Locale | str) -> gettext.NullTranslations:
    return translations(locale if isinstance(locale, str) else locale.language)


@lru_cache(maxsize=4096)
def format_money(cents: int, currency: str, locale: Locale | str) -> str:
    """Integer minor units as the locale writes an amount of that currency: `¥1,200`, `12,50 €`, `€12.50`.

    `cents` are the currency's minor units (DESIGN.md): 1200 JPY cents are ¥1,200, JPY having no decimals (CLDR).
    Remembered per amount, currency and locale (a pure function; a shop's prices repeat from mail to mail): Babel's
    formatting was 4.6 % of notify's CPU samples while it mailed a bench's burst.
    """
    amount = Decimal(cents).scaleb(-get_currency_precision(currency))
    return format_currency(amount, currency, locale=locale)


def format_when(value: datetime | None, locale: Locale | str) -> str:
    """A moment in UTC with its date written the locale's way (`Dec 1, 2026, 18:11 UTC`, `1 déc. 2026, 18:11 UTC`)."""
    if value is None:
        return ""
    locale = Locale.parse(locale) if isinstance(locale, str) else locale
    moment = value.astimezone(UTC)
    date = format_skeleton("yMMMd", moment, tzinfo=UTC, locale=locale)
    time = format_skeleton("Hm", moment, tzinfo=UTC, locale=locale)
    return f"{locale.datetime_formats['medium'].format(time, date)} UTC"


def install(env: jinja2.Environment, locale: Locale) -> jinja2.Environment:
    """Gives a Jinja2 environment (made with `jinja2.ext.i18n`) the locale's catalog: `_()`, `{% trans %}`."""
    env.install_gettext_translations(gettext_for(locale), newstyle=True)  # type: ignore[attr-defined]
    return env


# --- the catalogs themselves (python -m orderflow.i18n) --------------------------------------------------------


def extract() -> Catalog:
    """Every translatable text of the sources, as babel.cfg maps them (templates and `N_()`-marked Python)."""
    with (LOCALE_DIR / "babel.cfg").open() as cfg:
        method_map, options_map = parse_mapping_cfg(cfg)
    found = Catalog(project="orderflow")
    for path, line, message, comments, context in extract_from_dir(
        SOURCE_ROOT, method_map, options_map, directory_filter=_searched
    ):
        found.add(message, None, [(path, line)], auto_comments=comments, context=context)
    return found


def _searched(dirpath: str) -> bool:
    relative = Path(dirpath).resolve().relative_to(SOURCE_ROOT.resolve()).parts
    return not relative or (relative[0] in ("orderflow", "services") and not relative[-1].startswith((".", "_")))


def load(language: str) -> Catalog:
    with catalog_path(language).open("rb") as po:
        return read_po(po, locale=language, domain=DOMAIN)


def untranslated(language: str, messages: Catalog | None = None) -> list[str]:
    """The extracted texts the language's catalog lacks (or has only as fuzzy guesses)."""
    catalog = load(language)
    missing = []
    for message in messages if messages is not None else extract():
        if not message.id:
            continue
        known = catalog.get(message.id, message.context)
        strings = known.string if known is not None and isinstance(known.string, tuple) else (known and known.string,)
        if known is None or not all(strings) or known.fuzzy:
            missing.append(message.id if isinstance(message.id, str) else message.id[0])
    return missing


def update() -> dict[str, list[str]]:
    """Merges the extracted texts into every catalog (texts gone from the sources are dropped); what each lacks."""
    messages = extract()
    lacking = {}
    for language in LANGUAGES:
        if language == DEFAULT_LANGUAGE:
            continue
        catalog = load(language)
        messages.creation_date = catalog.creation_date  # no date-only change in the diff
        catalog.update(messages, no_fuzzy_matching=True)
        catalog.obsolete.clear()
        with catalog_path(language).open("wb") as po:
            write_po(po, catalog, width=120, no_location=True, sort_output=True, omit_header=False)
        lacking[language] = untranslated(language, messages)
    return lacking


if __name__ == "__main__":
    missing = update()
    for lang, ids in missing.items():
        print(f"{catalog_path(lang).relative_to(SOURCE_ROOT)}: {len(ids)} text(s) to translate")
        for message_id in ids:
            print(f"  {message_id}")
    sys.exit(1 if any(missing.values()) else 0)
