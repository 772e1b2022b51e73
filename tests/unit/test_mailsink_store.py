"""The mail sink's store: a message is kept as received and parsed on first read, with the same id for ever."""

from __future__ import annotations

from email.message import EmailMessage
from pathlib import Path

from orderflow.infra.mailsink import Mailbox


def _raw(subject: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Shop <shop@example.com>"
    msg["To"] = "Ada <ada@example.com>"
    msg["Subject"] = subject
    msg.set_content("Danke für Ihre Bestellung.")
    return bytes(msg)


def test_a_received_message_is_parsed_when_read_and_keeps_its_id_over_a_restart(tmp_path: Path) -> None:
    store = tmp_path / "mail.jsonl"
    box = Mailbox(store)
    box.receive(_raw("Bestellung 1001 — bestätigt"), "shop@example.com", ["ada@example.com"], tls=True,
                auth_user=None, auth_tls=None)
    assert len(box) == 1
    [first] = box.messages
    assert first["subject"] == "Bestellung 1001 — bestätigt"
    assert first["text"] == "Danke für Ihre Bestellung.\n"
    assert first["rcpt_to"] == ["ada@example.com"] and first["tls"] is True
    assert "raw" not in first

    again = Mailbox(store)
    assert len(again) == 1
    assert again.messages[0]["id"] == first["id"]
    assert again.messages[0]["received_at"] == first["received_at"]


def test_clear_empties_the_store(tmp_path: Path) -> None:
    store = tmp_path / "mail.jsonl"
    box = Mailbox(store)
    box.receive(_raw("one"), "a@example.com", ["b@example.com"])
    box.clear()
    assert len(box) == 0 and box.messages == [] and len(Mailbox(store)) == 0
