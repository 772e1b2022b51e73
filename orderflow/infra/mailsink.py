"""A local mail sink: an SMTP server that accepts every message and a small JSON API that lists them.

Tests and `orderflow up` use it instead of a real mail server, so e-mails can be asserted on. Messages are appended
to a JSONL file as they arrive, so a restart of the sink keeps them.

    python -m orderflow.infra.mailsink --smtp-port 2525 --http-port 8025 --store .run/mail.jsonl

Test modes, to play a difficult server:
- `PUT /faults {"stall_data_seconds": 40, "stall_rcpt": ["ann@"], "reject_rcpt": ["bob@"], "reject_reply": "550
  5.1.1 ..."}` (each key optional; `DELETE /faults` clears them): stall inside DATA (the message received, the reply
  held back; only for recipients containing one of `stall_rcpt`, if given), refuse RCPT TO for recipients
  containing one of `reject_rcpt`. `GET /faults` also counts the DATA commands received per
  recipient (stalled ones included) and those in progress.
- `--tls-cert/--tls-key`: offer STARTTLS with that certificate (`--implicit-tls`: TLS from the first byte, as on
  port 465); `--auth USER:PASS` accepts AUTH PLAIN/LOGIN with those credentials, in clear too, so a test can see
  whether a client waited for TLS. Each message records `tls`, `auth_user` and `auth_tls` (TLS when AUTH came).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

from orderflow.infra.ports import LOCALHOST, InfraError, ProcRef, free_port, http_ok, tail, wait_until


def parse(raw: bytes, mail_from: str, rcpt_to: list[str], *, message_id: str | None = None,
          received_at: str | None = None) -> dict[str, Any]:
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
        "id": message_id or uuid.uuid4().hex,
        "received_at": received_at or datetime.now(UTC).isoformat(),
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
    """Messages in memory, mirrored to an append-only JSONL file.

    A message is stored as received (its bytes, base64) and parsed when first read: parsing with the email package
    took 3-6 ms a message here, which made this sink the benchmark's limit on mails per second (36 % of a core at 51
    mails/s, 2026-12-02); receiving now costs a write, and whoever reads the mailbox pays for the parse, once."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self._parsed: list[dict[str, Any]] = []
        self._received: list[dict[str, Any]] = []  # as received, not parsed yet
        if store.exists():
            for line in store.read_text().splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    record = json.loads(line)
                    (self._received if "raw" in record else self._parsed).append(record)

    def __len__(self) -> int:
        return len(self._parsed) + len(self._received)

    @property
    def messages(self) -> list[dict[str, Any]]:
        """Every message as the API lists it, in the order received."""
        if self._received:
            self._parsed.extend(_parsed(r) for r in self._received)
            self._received.clear()
        return self._parsed

    def receive(self, raw: bytes, mail_from: str, rcpt_to: list[str], **extra: Any) -> None:
        record = {"id": uuid.uuid4().hex, "received_at": datetime.now(UTC).isoformat(), "mail_from": mail_from,
                  "rcpt_to": list(rcpt_to), **extra, "raw": base64.b64encode(raw).decode("ascii")}
        self.store.parent.mkdir(parents=True, exist_ok=True)
        with open(self.store, "a") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
        self._received.append(record)

    def clear(self) -> None:
        self.store.parent.mkdir(parents=True, exist_ok=True)
        self.store.write_text("")
        self._parsed.clear()
        self._received.clear()


def _parsed(received: dict[str, Any]) -> dict[str, Any]:
    extra = {k: v for k, v in received.items() if k not in {"id", "received_at", "mail_from", "rcpt_to", "raw"}}
    return parse(base64.b64decode(received["raw"]), received["mail_from"], received["rcpt_to"],
                 message_id=received["id"], received_at=received["received_at"]) | extra


@dataclass
class Faults:
    """What the sink does wrong on purpose (set over HTTP), and what it saw of DATA."""

    stall_data_seconds: float = 0.0
    stall_rcpt: list[str] = field(default_factory=list)
    """Stall only messages to a recipient containing one of these (empty: every message)."""
    reject_rcpt: list[str] = field(default_factory=list)
    reject_reply: str = "550 5.1.1 Recipient address rejected: mailbox unavailable"
    data_started: dict[str, int] = field(default_factory=dict)
    in_data: int = 0

    def update(self, body: dict[str, Any]) -> None:
        if "stall_data_seconds" in body:
            self.stall_data_seconds = float(body["stall_data_seconds"])
        if "stall_rcpt" in body:
            self.stall_rcpt = [str(r) for r in body["stall_rcpt"]]
        if "reject_rcpt" in body:
            self.reject_rcpt = [str(r) for r in body["reject_rcpt"]]
        if "reject_reply" in body:
            self.reject_reply = str(body["reject_reply"])

    def clear(self) -> None:
        self.stall_data_seconds, self.stall_rcpt, self.reject_rcpt = 0.0, [], []

    def to_json(self) -> dict[str, Any]:
        return {"stall_data_seconds": self.stall_data_seconds, "stall_rcpt": self.stall_rcpt,
                "reject_rcpt": self.reject_rcpt,
                "reject_reply": self.reject_reply, "data_started": self.data_started, "in_data": self.in_data}


def _tls_of(server: Any, session: Any) -> bool:
    transport = getattr(server, "transport", None)
    return session.ssl is not None or (transport is not None and transport.get_extra_info("ssl_object") is not None)


class _Handler:
    def __init__(self, mailbox: Mailbox, faults: Faults | None = None) -> None:
        self.mailbox = mailbox
        self.faults = faults or Faults()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options) -> str:  # noqa: N802, ANN001
        if any(r.lower() in address.lower() for r in self.faults.reject_rcpt):
            return self.faults.reject_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 - aiosmtpd's hook name
        faults = self.faults
        for rcpt in envelope.rcpt_tos:
            faults.data_started[rcpt] = faults.data_started.get(rcpt, 0) + 1
        faults.in_data += 1
        try:
            stalls = not faults.stall_rcpt or any(s.lower() in r.lower() for s in faults.stall_rcpt
                                                  for r in envelope.rcpt_tos)
            if faults.stall_data_seconds > 0 and stalls:
                await asyncio.sleep(faults.stall_data_seconds)  # a slow server: the message is here, no reply yet
        finally:
            faults.in_data -= 1
        raw = envelope.original_content or envelope.content
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        auth = getattr(session, "orderflow_auth", None) or {}
        self.mailbox.receive(raw, envelope.mail_from or "", envelope.rcpt_tos, tls=_tls_of(server, session),
                             auth_user=auth.get("user"), auth_tls=auth.get("tls"))
        return "250 Message accepted for delivery"


def _authenticator(credentials: tuple[str, str]):  # noqa: ANN202
    from aiosmtpd.smtp import AuthResult, LoginPassword

    def check(server, session, envelope, mechanism, auth_data) -> AuthResult:  # noqa: ANN001
        ok = isinstance(auth_data, LoginPassword) and (
            auth_data.login.decode(), auth_data.password.decode()) == credentials
        if ok:
            session.orderflow_auth = {"user": credentials[0], "tls": _tls_of(server, session)}
        return AuthResult(success=ok)

    return check


def _matches(record: dict[str, Any], query: Any) -> bool:
    to = query.get("to")
    if to and not any(to.lower() in r.lower() for r in [*record["rcpt_to"], record["to"]]):
        return False
    subject = query.get("subject")
    return not (subject and subject.lower() not in record["subject"].lower())


def make_app(mailbox: Mailbox, faults: Faults | None = None):
    from aiohttp import web

    faults = faults or Faults()

    async def health(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "messages": len(mailbox)})

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

    async def get_faults(_request: web.Request) -> web.Response:
        return web.json_response(faults.to_json())

    async def put_faults(request: web.Request) -> web.Response:
        faults.update(await request.json())
        return web.json_response(faults.to_json())

    async def clear_faults(_request: web.Request) -> web.Response:
        faults.clear()
        return web.json_response(faults.to_json())

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/messages", list_messages)
    app.router.add_delete("/messages", clear)
    app.router.add_get("/messages/{id}", get_message)
    app.router.add_get("/faults", get_faults)
    app.router.add_put("/faults", put_faults)
    app.router.add_delete("/faults", clear_faults)
    return app


@dataclass(frozen=True)
class TlsOptions:
    cert: Path | None = None
    key: Path | None = None
    implicit: bool = False
    auth: tuple[str, str] | None = None

    def context(self):  # noqa: ANN201 - ssl.SSLContext | None
        if self.cert is None:
            return None
        import ssl

        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(self.cert), str(self.key or self.cert))
        return ctx

    def args(self) -> list[str]:
        out = []
        if self.cert is not None:
            out += ["--tls-cert", str(self.cert), "--tls-key", str(self.key or self.cert)]
        if self.implicit:
            out.append("--implicit-tls")
        if self.auth is not None:
            out += ["--auth", ":".join(self.auth)]
        return out


async def serve(host: str, smtp_port: int, http_port: int, store: Path, tls: TlsOptions | None = None) -> None:
    """Run both servers until SIGTERM/SIGINT."""
    from aiohttp import web
    from aiosmtpd.smtp import SMTP

    tls = tls or TlsOptions()
    mailbox = Mailbox(store)
    faults = Faults()
    loop = asyncio.get_running_loop()
    handler = _Handler(mailbox, faults)
    context = tls.context()
    options: dict[str, Any] = {"hostname": "orderflow-mailsink", "enable_SMTPUTF8": True, "loop": loop}
    if context is not None and not tls.implicit:
        options["tls_context"] = context
    if tls.auth is not None:
        options.update(authenticator=_authenticator(tls.auth), auth_require_tls=False)
    smtp_server = await loop.create_server(lambda: SMTP(handler, **options), host, smtp_port,
                                           ssl=context if tls.implicit else None)
    runner = web.AppRunner(make_app(mailbox, faults), access_log=None)
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
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate: offer STARTTLS (or implicit TLS) with it")
    parser.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert (default: in the same file)")
    parser.add_argument("--implicit-tls", action="store_true", help="TLS from the first byte (port 465 style)")
    parser.add_argument("--auth", metavar="USER:PASS", help="accept AUTH with these credentials")
    args = parser.parse_args(argv)
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    if args.implicit_tls and not args.tls_cert:
        parser.error("--implicit-tls needs --tls-cert")
    tls = TlsOptions(args.tls_cert, args.tls_key, args.implicit_tls, auth)  # type: ignore[arg-type]
    asyncio.run(serve(args.host, args.smtp_port, args.http_port, args.store, tls))


# --- running it as a detached process (stack, tests) --------------------------------------------------------


@dataclass
class MailSinkHandle:
    smtp_port: int
    http_port: int
    store: Path
    log_file: Path
    proc: ProcRef | None = None
    smtp_host: str = LOCALHOST
    tls: TlsOptions = field(default_factory=TlsOptions)

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
                 "--http-port", str(self.http_port), "--store", str(self.store), *self.tls.args()],
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


def start(run_dir: Path | str, *, smtp_port: int | None = None, http_port: int | None = None,
          tls: TlsOptions | None = None) -> MailSinkHandle:
    """Start a sink as a detached process whose store and log live in run_dir (TLS/AUTH test modes: `tls`)."""
    run_dir = Path(run_dir)
    smtp_port = smtp_port or free_port()
    http_port = http_port or free_port()
    if http_port == smtp_port:
        raise InfraError("mail sink needs two different ports")
    handle = MailSinkHandle(smtp_port, http_port, run_dir / "mail.jsonl", run_dir / "logs" / "mailsink.log",
                            tls=tls or TlsOptions())
    return handle.start()


if __name__ == "__main__":
    main()
