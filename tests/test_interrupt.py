"""Ctrl-C stops a simulation promptly (the end-to-end check with Ray is in test_resume.py): the server's
grid gives up waiting as soon as the stop flag is set, and Flower's log lines are printed once, plain."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading

import pytest
from flwr.app import Message, MessageType, RecordDict
from inprocess_grid import InProcessGrid, ProtocolClient, digits, tiny_net

from fedlayer.interrupt import Interruptible, RunInterrupted, StoppableGrid


def queries(grid) -> list[Message]:
    return [
        Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY) for node in sorted(grid.get_node_ids())
    ]


def test_a_stoppable_grid_waits_like_flowers_and_gives_up_once_stopped():
    inner = InProcessGrid(ProtocolClient(tiny_net, *digits()).app, 3, node_seed=0)
    stop = threading.Event()
    grid = StoppableGrid(inner, stop)
    replies = grid.send_and_receive(queries(grid), timeout=10)
    assert sorted(m.metadata.src_node_id for m in replies) == sorted(inner.get_node_ids())
    stop.set()
    with pytest.raises(RunInterrupted):
        grid.send_and_receive(queries(grid), timeout=10)


class Silent(InProcessGrid):
    """Clients that never answer; the second poll for replies sets the stop flag (a Ctrl-C meanwhile)."""

    def __init__(self, stop: threading.Event) -> None:
        super().__init__(ProtocolClient(tiny_net, *digits()).app, 2, node_seed=0)
        self.stop, self.polls = stop, 0

    def pull_messages(self, message_ids):
        self.polls += 1
        if self.polls == 2:
            self.stop.set()
        return []


def test_a_server_waiting_for_clients_that_never_answer_stops_at_the_next_poll():
    stop = threading.Event()
    grid = StoppableGrid(Silent(stop), stop)
    with pytest.raises(RunInterrupted):
        grid.send_and_receive(queries(grid), timeout=None)  # no timeout: it would wait forever
    assert grid.grid.polls == 2


def test_a_signal_stops_the_server_and_ends_the_block_with_keyboard_interrupt():
    served = []
    server = Interruptible(lambda grid, context: served.append(grid))
    with pytest.raises(KeyboardInterrupt), server.signals():
        signal.raise_signal(signal.SIGINT)  # to this thread, so handled at once: only the stop flag is set
        assert server.stop.is_set() and server.interrupted
        server.serve(object(), None)  # a server that starts after the signal does nothing
    assert served == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_the_servers_interruption_reaches_the_caller_as_keyboard_interrupt():
    server = Interruptible(lambda grid, context: None)
    with pytest.raises(KeyboardInterrupt), server.signals():
        raise RunInterrupted("the run was interrupted")


def test_a_block_that_ends_normally_raises_nothing_and_stops_the_server():
    server = Interruptible(lambda grid, context: None)
    with server.signals():
        pass
    assert server.stop.is_set() and not server.interrupted


def test_flowers_log_lines_are_printed_once_and_without_colour_codes_off_a_terminal():
    script = (
        "import logging\n"
        "from fedlayer.simulation import quiet_logs\n"
        "logging.basicConfig(level=logging.INFO)\n"  # as the CLI does
        "with quiet_logs(verbose=True):\n"
        "    logging.getLogger('flwr').warning('round 1: something to say')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "something to say" in line]
    assert len(lines) == 1, done.stderr
    assert "\x1b[" not in done.stderr
