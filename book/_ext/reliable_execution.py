"""Notebook execution that cannot stall silently: the fix for a lost ZMQ wake-up between nbclient and the kernel.

**The stall** (measured with `tools/exec_harness.py`, client-side message log): a cell with an ipywidgets explorer
(`interact` makes an `Output` widget) finishes in seconds, the kernel sends `status: idle` and then `execute_reply`,
and nbclient sits for the whole cell timeout before it reads that reply, then carries on as if nothing happened (the
build logs "Executed notebook in 910 s"). Both processes are idle in their event loops.

**The cause.** nbclient mirrors each `Output` widget (`nbclient.output_widget.OutputWidget`) and, while it processes
the widget's IOPub messages, *sends* a `comm_msg` on the shell socket (`sync_state`). At the same moment its
`_async_poll_for_reply` coroutine is awaiting `shell_channel.get_msg(timeout)`, i.e. a pyzmq asyncio `poll` on that same
socket. A ZMQ socket signals readiness through an edge-triggered file descriptor, and `zmq_send` processes the socket's
pending commands, which can consume the edge that announced the arriving `execute_reply`. The pending poll then never
wakes up; only when its timeout expires does pyzmq's final `poll(0)` find the reply waiting in the socket. The window is
a few milliseconds wide, so it takes a loaded CPU (a reply that arrives *during* the send) to hit it. Upstream:
jupyter/nbclient#312 and #311 ("nbclient pulls messages from the shell channel while sending messages to it"), open.

**The fix.** `jupyter_client`'s async channel `get_msg` polls in slices of at most `POLL_SLICE` seconds instead of one
long poll: each slice ends with the same `poll(0)` that eventually found the reply, so a lost edge now costs at most
one slice, whatever the cell timeout. A message found by a slice-end check that had already waited most of the slice in
the socket (a wake-up that was lost) is counted in `LOST_WAKEUPS`, so the harness can show the mechanism at work.

**Failing loudly.** A cell that really does run too long raises `CellTimeoutError` naming the notebook's cell number
and id; the book build (`-W`) turns that into a failure. Cell timeouts are sized per notebook: `execute.timeout` in
book/_config.yml is the default for every cell, and a notebook with slower cells carries `"execution": {"timeout": N}`
in its metadata (jupyter-cache honours it), N = slowest measured cell x a margin.

Used by the book build (`book_fixes.setup` calls `install()`), `tools/execute.py` and `tools/exec_harness.py --fixed`.
"""
from __future__ import annotations

import time

POLL_SLICE = 0.25          # seconds: the longest a lost wake-up can delay a message
LOST_WAKEUPS: list[float] = []   # monotonic times at which a message was found by a slice-end check


def _age(sent) -> float:
    "Seconds since a message's header date (the sender's clock: the same machine)."
    from datetime import datetime, timezone
    try:
        if isinstance(sent, str):
            sent = datetime.fromisoformat(sent.replace("Z", "+00:00"))
        return (datetime.now(timezone.utc) - sent).total_seconds()
    except (TypeError, ValueError):
        return 0.0


def install() -> None:
    "Patch jupyter_client's async channel polling and nbclient's timeout message (idempotent)."
    from queue import Empty

    from jupyter_client.channels import AsyncZMQSocketChannel
    from nbclient.client import NotebookClient

    if getattr(AsyncZMQSocketChannel, "_sliced_poll", False):
        return

    async def get_msg(self, timeout: float | None = None) -> dict:
        "Like jupyter_client's, but polls in slices: a wake-up lost to a concurrent send costs one slice at most."
        assert self.socket is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = POLL_SLICE if deadline is None else max(0.0, min(POLL_SLICE, deadline - time.monotonic()))
            t0 = time.monotonic()
            ready = await self.socket.poll(int(left * 1000))
            if ready:
                msg = await self._recv()
                if left > 0 and time.monotonic() - t0 >= 0.95 * left:   # the poll ran its full slice...
                    sent = msg.get("header", {}).get("date")             # ...and the message had been waiting
                    if sent is not None and _age(sent) >= 0.9 * left:
                        LOST_WAKEUPS.append(t0)
                return msg
            if deadline is not None and time.monotonic() >= deadline:
                raise Empty

    AsyncZMQSocketChannel.get_msg = get_msg
    AsyncZMQSocketChannel._sliced_poll = True

    handle_timeout = NotebookClient._async_handle_timeout

    async def _async_handle_timeout(self, timeout, cell=None):
        "nbclient's timeout handling, with the cell's number and id in the error."
        try:
            return await handle_timeout(self, timeout, cell)
        except Exception as e:
            if cell is not None and cell in self.nb.cells:
                e.args = (f"cell {self.nb.cells.index(cell)} (id {cell.get('id', '?')}) ran longer than its "
                          f"{timeout} s timeout.\n" + (str(e.args[0]) if e.args else ""),) + tuple(e.args[1:])
            raise

    NotebookClient._async_handle_timeout = _async_handle_timeout
