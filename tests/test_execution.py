"""The notebook-execution fix of book/_ext/reliable_execution.py (the book build's stall, nbclient #312)."""
import asyncio
import sys
import time
from pathlib import Path
from queue import Empty

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "book" / "_ext"))
import reliable_execution  # noqa: E402
from jupyter_client.channels import AsyncZMQSocketChannel  # noqa: E402

_ORIGINAL_GET_MSG = AsyncZMQSocketChannel.get_msg
reliable_execution.install()


class _LostWakeupSocket:
    "A socket whose message is waiting but whose poll is never woken: it only sees the message when its timeout ends."

    def __init__(self, has_message=True):
        self.has_message, self.polls = has_message, []

    async def poll(self, timeout_ms=None):
        self.polls.append(timeout_ms)
        if timeout_ms is None:
            await asyncio.sleep(3600)
        await asyncio.sleep(timeout_ms / 1000)
        return 1 if self.has_message else 0   # pyzmq's final poll(0) at the timeout finds the waiting message


class _Channel:
    def __init__(self, socket):
        self.socket = socket

    async def _recv(self):
        return {"header": {"msg_type": "execute_reply"}, "parent_header": {}, "content": {}}


def test_a_lost_wakeup_costs_one_slice_not_the_timeout():
    ch = _Channel(_LostWakeupSocket())
    t0 = time.monotonic()
    msg = asyncio.run(AsyncZMQSocketChannel.get_msg(ch, timeout=30.0))
    assert msg["header"]["msg_type"] == "execute_reply"
    assert time.monotonic() - t0 < 30.0 / 4          # one slice (0.25 s), whatever the load; the timeout is 30 s
    assert ch.socket.polls == [int(reliable_execution.POLL_SLICE * 1000)]


def test_without_the_fix_the_same_socket_waits_the_whole_timeout():
    ch = _Channel(_LostWakeupSocket())
    t0 = time.monotonic()
    asyncio.run(_ORIGINAL_GET_MSG(ch, timeout=1.0))
    assert time.monotonic() - t0 >= 1.0               # the original single poll only sees it at the deadline
    assert ch.socket.polls == [1000]


def test_no_message_still_times_out_and_timeout_none_waits():
    ch = _Channel(_LostWakeupSocket(has_message=False))
    t0 = time.monotonic()
    with pytest.raises(Empty):
        asyncio.run(AsyncZMQSocketChannel.get_msg(ch, timeout=0.6))
    assert time.monotonic() - t0 >= 0.6 and len(ch.socket.polls) >= 3   # sliced: 0.25 + 0.25 + 0.1
    ch = _Channel(_LostWakeupSocket(has_message=False))
    with pytest.raises(asyncio.TimeoutError):                              # timeout=None: polls until a message
        asyncio.run(asyncio.wait_for(AsyncZMQSocketChannel.get_msg(ch, timeout=None), 0.8))
    assert len(ch.socket.polls) >= 3


def test_install_is_idempotent():
    patched = AsyncZMQSocketChannel.get_msg
    reliable_execution.install()
    assert AsyncZMQSocketChannel.get_msg is patched


@pytest.mark.slow
def test_a_timeout_names_the_cell(tmp_path):
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1"),
                                         nbformat.v4.new_code_cell("import time\ntime.sleep(30)")])
    nb.cells[1].id = "slowcell"
    with pytest.raises(CellTimeoutError, match=r"cell 1 \(id slowcell\) ran longer than its 3 s timeout"):
        NotebookClient(nb, timeout=3, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
