"""`orderflow demo` against real workers of the four services: every rule of the story holds, with the mail sink and
with Mailpit as the mail server (the demo reads mail through either API, as it does against compose)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.workers import make_worker, worker_env

pytestmark = pytest.mark.slow

SERVICES = ("orders", "inventory", "cart", "notify")


@pytest.fixture(params=["sink", "mailpit"])
def mail_server(request: pytest.FixtureRequest) -> dict[str, str]:
    """SMTP_HOST, SMTP_PORT and MAILBOX_URL of the mail server the workers send to and the demo reads."""
    if request.param == "sink":
        return request.getfixturevalue("mailsink").env
    server = request.getfixturevalue("mailpit_server")
    return {"SMTP_HOST": server.smtp_host, "SMTP_PORT": str(server.smtp_port), "MAILBOX_URL": server.http_url}


@pytest.fixture
def stack_workers(kafka_bootstrap: str, database_url: str, mail_server: dict[str, str], tmp_path: Path):
    env = worker_env(kafka_bootstrap, database_url, **mail_server, ABANDON_SCAN_MS="200",
                     PUBLIC_STORE_URL="http://shop.example")
    workers = {name: make_worker(name, env, tmp_path).start() for name in SERVICES}
    try:
        for w in workers.values():
            w.wait_ready(timeout=90)
        yield env, workers
    finally:
        for w in workers.values():
            w.stop()


NOTICE = ("WARNING", "ERROR", "did not come", "reading again", "seeking again", "not in the log", "waiting for")


def diagnosis(env: dict[str, str], workers: dict) -> str:
    """What a failed run leaves to explain it: notify's mail rows of this run and the workers' notable log lines."""
    import asyncio

    import asyncpg

    async def mails() -> list[str]:
        conn = await asyncpg.connect(env["DATABASE_URL"], server_settings={"search_path": "notify"})
        try:
            rows = await conn.fetch("SELECT ref, kind, state, attempts, created_at, next_attempt_at, sent_at, "
                                    "last_error FROM mails WHERE shop_id LIKE 'demo-%' ORDER BY created_at")
        finally:
            await conn.close()
        return [" ".join(str(v) for v in r.values()) for r in rows]

    lines = ["", "notify.mails:", *asyncio.run(mails())]
    for name, worker in workers.items():
        notable = [line for line in worker.log_path.read_text(errors="replace").splitlines()
                   if any(word in line for word in NOTICE)]
        lines += [f"{name} log ({len(notable)} notable lines, last 40):", *notable[-40:]]
    return "\n".join(lines)


def test_the_demo_story_holds_every_rule(stack_workers, mail_server: dict[str, str]) -> None:
    env, workers = stack_workers
    demo_env = {**env, "MAILBOX_URL": mail_server["MAILBOX_URL"],
                **{f"{name.upper()}_URL": w.url for name, w in workers.items()}}
    done = subprocess.run([sys.executable, "-m", "orderflow.sim.demo"], env=demo_env, capture_output=True,
                          text=True, timeout=120)
    print(done.stdout)  # the report, shown with -s
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:] + diagnosis(env, workers)
    assert "ALL RULES HELD" in done.stdout
    assert "mails sent:" in done.stdout
