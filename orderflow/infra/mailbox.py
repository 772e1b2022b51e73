"""Reading the mail that was sent: one interface over Mailpit's API and the local sink's.

`orderflow demo` and tests ask "which messages went to X" the same way whichever server took them: Mailpit
(`orderflow up --mail mailpit`, docker-compose.yml, `orderflow containers up`) or the hand-written sink (the default
local stack and the fault-injection tests). `MAILBOX_URL` names the server; its kind is found by asking it.
Each message comes back as the sink's record: `to`, `from`, `subject`, `rcpt_to`, `message_id`, `text`, `html`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import httpx

MAILPIT_PAGE = 500


class Mailbox(Protocol):
    async def messages(self, to: str | None = None) -> list[dict[str, Any]]:
        """Messages whose recipients contain `to` (any part of an address; all when None), oldest first."""
        ...

    async def clear(self) -> None: ...


@dataclass
class SinkMailbox:
    """orderflow.infra.mailsink's `/messages`."""

    url: str
    http: httpx.AsyncClient

    async def messages(self, to: str | None = None) -> list[dict[str, Any]]:
        r = await self.http.get(f"{self.url}/messages", params={"to": to} if to else None)
        r.raise_for_status()
        return r.json()

    async def clear(self) -> None:
        (await self.http.delete(f"{self.url}/messages")).raise_for_status()


def _address(entry: dict[str, Any]) -> str:
    return f"{entry['Name']} <{entry['Address']}>" if entry.get("Name") else entry["Address"]


@dataclass
class MailpitMailbox:
    """Mailpit's API: `/api/v1/search` for the list (its `to:` term matches part of an address), then
    `/api/v1/message/{ID}` for each body. Bodies are fetched once per message and kept."""

    url: str
    http: httpx.AsyncClient

    def __post_init__(self) -> None:
        self._bodies: dict[str, dict[str, Any]] = {}

    async def _summaries(self, to: str | None) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        while True:
            params: dict[str, Any] = {"limit": MAILPIT_PAGE, "start": len(found)}
            if to:
                params["query"] = f'to:"{to}"'
            r = await self.http.get(f"{self.url}/api/v1/search" if to else f"{self.url}/api/v1/messages", params=params)
            r.raise_for_status()
            page = r.json()
            found.extend(page["messages"])
            if not page["messages"] or len(found) >= page.get("messages_count", len(found)):
                return found

    async def _body(self, message_id: str) -> dict[str, Any]:
        if message_id not in self._bodies:
            r = await self.http.get(f"{self.url}/api/v1/message/{message_id}")
            r.raise_for_status()
            self._bodies[message_id] = r.json()
        return self._bodies[message_id]

    async def messages(self, to: str | None = None) -> list[dict[str, Any]]:
        records = []
        for summary in reversed(await self._summaries(to)):  # Mailpit lists newest first
            body = await self._body(summary["ID"])
            recipients = [_address(a) for a in summary.get("To") or []]
            records.append(
                {
                    "id": summary["ID"],
                    "received_at": summary.get("Created"),
                    "mail_from": (body.get("ReturnPath") or (summary.get("From") or {}).get("Address", "")),
                    "rcpt_to": [
                        a["Address"]
                        for a in [*(summary.get("To") or []), *(summary.get("Cc") or []), *(summary.get("Bcc") or [])]
                    ],
                    "to": ", ".join(recipients),
                    "from": _address(summary["From"]) if summary.get("From") else "",
                    "subject": summary.get("Subject", ""),
                    "message_id": f"<{summary['MessageID']}>" if summary.get("MessageID") else "",
                    "text": (body.get("Text") or "").replace("\r\n", "\n") or None,
                    "html": body.get("HTML") or None,
                }
            )
        return records

    async def clear(self) -> None:
        (await self.http.delete(f"{self.url}/api/v1/messages")).raise_for_status()


async def open_mailbox(url: str, http: httpx.AsyncClient) -> Mailbox:
    """The client for whichever server answers at `url`: Mailpit answers `/api/v1/info`, the sink does not."""
    url = url.rstrip("/")
    try:
        info = await http.get(f"{url}/api/v1/info")
    except httpx.HTTPError:
        return SinkMailbox(url, http)
    return MailpitMailbox(url, http) if info.status_code == 200 and "Version" in info.text else SinkMailbox(url, http)
