"""A local mail sink: an SMTP server that accepts every message and a small JSON API that lists them.

Tests and `orderflow up` use it instead of a real mail server, so e-mails can be asserted on. Messages are appended
to a JSONL file as they arrive, so a restart of the sink keeps them.

    python -m orderflow.infra.mailsink --smtp-port 2525 --http-port 8025 --store .run/mail.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

from orderflow.infra.ports import LOCALHOST, InfraError, ProcRef, free_port, http_ok, tail, wait_until


def parse(raw: bytes, mail_from: str, rcpt_to: list[str]) -> dict[str, Any]:
    """One received message as the JSON record the API lists."""
    msg: EmailMessage = message_from_bytes(raw, policy=default_policy)  # type: ignore[assignment]
    headers: dict[str, list[str]] = {}
    for name, value in msg.items():
        headers.setdefault(name, []).append(str(value))

    def body(kind: str) -> str | None:
        part = msg.get_body(preferencelist=(kind,))
        if part is None:
            return None
        try:
            content = part.get_content()
        except (LookupError, ValueError):
            content = part.get_payload(decode=True).decode("utf-8", "replace")
        return content.replace("\r\n", "\n")  # SMTP's CRLF line ends are transport, not content

    return {
        "id": uuid.uuid4().hex,
        "received_at": datetime.now(UTC).isoformat(),
        "mail_from": mail_from,
        "rcpt_to": list(rcpt_to),
        "to": str(msg.get("To", "")),
        "from": str(msg.get("From", "")),
        "subject": str(msg.get("Subject", "")),
        "message_id": str(msg.get("Message-ID", "")),
        "headers": headers,
        "text": body("plain"),
        "html": body("html"),
    }


class Mailbox:
    """Messages in memory, mirrored to an append-only JSONL file."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.messages: list[dict[str, Any]] = []
        if store.exists():
            for line in store.read_text().splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    self.messages.append(json.loads(line))

    def add(self, record: dict[str, Any]) -> None:
        self.store.parent.mkdir(parents=True, exist_ok=True)
        with open(self.store, "a") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
        self.messages.append(record)

    def clear(self) -> None:
        self.store.parent.mkdir(parents=True, exist_ok=True)
        self.store.write_text("")
        self.messages.clear()


class _Handler:
    def __init__(self, mailbox: Mailbox) -> None:
        self.mailbox = mailbox

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 - aiosmtpd's hook name
        raw = envelope.original_content or envelope.content
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        self.mailbox.add(parse(raw, envelope.mail_from or "", envelope.rcpt_tos))
        return "250 Message accepted for delivery"


def _matches(record: dict[str, Any], query: Any) -> bool:
    to = query.get("to")
    if to and not any(to.lower() in r.lower() for r in [*record["rcpt_to"], record["to"]]):
        return False
    subject = query.get("subject")
    return not (subject and subject.lower() not in record["subject"].lower())


def make_app(mailbox: Mailbox):
    from aiohttp import web

    async def health(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "messages": len(mailbox.messages)})

    async def list_messages(request: web.Request) -> web.Response:
        return web.json_response([m for m in mailbox.messages if _matches(m, request.query)])

    async def get_message(request: web.Request) -> web.Response:
        for m in mailbox.messages:
            if m["id"] == request.match_info["id"]:
                return web.json_response(m)
        return web.json_response({"error": "no such message"}, status=404)

    async def clear(_request: web.Request) -> web.Response:
        mailbox.clear()
        return web.json_response({"deleted": True})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/messages", list_messages)
    app.router.add_delete("/messages", clear)
    app.router.add_get("/messages/{id}", get_message)
    return app


async def serve(host: str, smtp_port: int, http_port: int, store: Path) -> None:
    """Run both servers until SIGTERM/SIGINT."""
    from aiohttp import web
    from aiosmtpd.smtp import SMTP

    mailbox = Mailbox(store)
    loop = asyncio.get_running_loop()
    handler = _Handler(mailbox)
    smtp_server = await loop.create_server(
        lambda: SMTP(handler, hostname="orderflow-mailsink", enable_SMTPUTF8=True, loop=loop), host, smtp_port
    )
    runner = web.AppRunner(make_app(mailbox), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, http_port).start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"mail sink: smtp://{host}:{smtp_port} http://{host}:{http_port} store={store}", flush=True)
    await stop.wait()
    smtp_server.close()
    await smtp_server.wait_closed()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m orderflow.infra.mailsink", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=LOCALHOST)
    parser.add_argument("--smtp-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--store", type=Path, required=True, help="JSONL file that keeps every message")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.smtp_port, args.http_port, args.store))


# --- running it as a detached process (stack, tests) --------------------------------------------------------


@dataclass
class MailSinkHandle:
    smtp_port: int
    http_port: int
    store: Path
    log_file: Path
    proc: ProcRef | None = None
    smtp_host: str = LOCALHOST

    @property
    def http_url(self) -> str:
        return f"http://{LOCALHOST}:{self.http_port}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def healthy(self) -> bool:
        return http_ok(f"{self.http_url}/health")

    def start(self, timeout: float = 30.0) -> MailSinkHandle:
        if self.alive():
            return self
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "orderflow.infra.mailsink", "--smtp-port", str(self.smtp_port),
                 "--http-port", str(self.http_port), "--store", str(self.store)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.proc = ProcRef.of(popen.pid)
        try:
            wait_until(self.healthy, timeout=timeout, what=f"mail sink at {self.http_url} (log: {self.log_file})",
                       abort=lambda: None if popen.poll() is None else f"exited\n{tail(self.log_file)}")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=10)

    def restart(self) -> MailSinkHandle:
        self.stop()
        return self.start()

    def to_state(self) -> dict:
        return {"smtp_host": self.smtp_host, "smtp_port": self.smtp_port, "http_port": self.http_port,
                "url": self.http_url, "store": str(self.store), "log": str(self.log_file),
                "process": self.proc.to_state() if self.proc else None}

    @classmethod
    def from_state(cls, state: dict) -> MailSinkHandle:
        proc = ProcRef.from_state(state["process"]) if state.get("process") else None
        return cls(int(state["smtp_port"]), int(state["http_port"]), Path(state["store"]), Path(state["log"]), proc)


def start(run_dir: Path | str, *, smtp_port: int | None = None, http_port: int | None = None) -> MailSinkHandle:
    """Start a sink as a detached process whose store and log live in run_dir."""
    run_dir = Path(run_dir)
    smtp_port = smtp_port or free_port()
    http_port = http_port or free_port()
    if http_port == smtp_port:
        raise InfraError("mail sink needs two different ports")
    handle = MailSinkHandle(smtp_port, http_port, run_dir / "mail.jsonl", run_dir / "logs" / "mailsink.log")
    return handle.start()


if __name__ == "__main__":
    main()
