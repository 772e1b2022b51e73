"""Where a worker is, on demand: `kill -USR1 <pid>` logs the stack of every asyncio task of its event loop;
`kill -USR2 <pid>` writes every thread's Python stack to stderr (faulthandler), even when the loop is blocked.

Written for a stall seen in rebalance fault runs: a surviving worker applied nothing on two partitions for 150 s
and its stall watchdog logged nothing, so nothing said which await or which call held it.
"""

from __future__ import annotations

import asyncio
import faulthandler
import io
import logging
import signal
import sys

log = logging.getLogger(__name__)


def task_stacks(loop: asyncio.AbstractEventLoop) -> str:
    """One block per pending task: its name, coroutine and stack (innermost frame last)."""
    out = io.StringIO()
    tasks = sorted(asyncio.all_tasks(loop), key=lambda t: t.get_name())
    out.write(f"{len(tasks)} asyncio task(s)\n")
    for task in tasks:
        out.write(f"--- {task.get_name()} {task.get_coro()!r}\n")
        task.print_stack(limit=12, file=out)
    return out.getvalue()


def install(loop: asyncio.AbstractEventLoop) -> None:
    """SIGUSR1: the tasks' stacks to the log; SIGUSR2: the threads' stacks to stderr."""
    faulthandler.register(signal.SIGUSR2, file=sys.stderr, all_threads=True)
    loop.add_signal_handler(signal.SIGUSR1, lambda: log.warning("stacks on SIGUSR1:\n%s", task_stacks(loop)))
