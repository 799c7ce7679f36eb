"""Ctrl-C and SIGTERM stop a simulation within a second or two, quietly, keeping the last committed round.

Flower's simulation runs the ServerApp in a thread of its own while the main thread drives Ray. A
signal interrupts only the main thread: Flower then stops Ray, but its server thread goes on waiting
for replies that never come until the round timeout (600 s by default), and reports every client as
timed out. Here the signal itself sets a stop flag; the grid the ServerApp is given
(`StoppableGrid`) raises `RunInterrupted` at its next poll, so the server thread ends at once without
committing anything more, and Flower's simulation ends as after a finished run.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from flwr.app import Context, Message
from flwr.serverapp import Grid

from fedlayer.errors import RunError
from strategies.grid import GridWrapper
from strategies.sampling import is_simulation_grid

POLL_S = 0.1  # how often a waiting server checks for replies and for the stop flag (Flower's own interval)
SIMULATION_POLL_S = 0.01  # the same on Flower's simulation grid, where a check is a look into this process's memory


class RunInterrupted(RunError):
    """The run was stopped by Ctrl-C or SIGTERM while the server waited for clients."""


class StoppableGrid(GridWrapper):
    """A Grid whose `send_and_receive` gives up as soon as `stop` is set (raising `RunInterrupted`).

    It waits as Flower's grids do: every reply, or until `timeout` seconds have passed. It looks for replies
    every `POLL_S` seconds, as Flower's grids do, and every `SIMULATION_POLL_S` on Flower's simulation grid:
    there a look costs a fraction of a millisecond, and Flower's 0.1 s left a round's two phases waiting
    for a reply that had come 0.05 s on average, each.
    """

    def __init__(self, grid: Grid, stop: threading.Event) -> None:
        super().__init__(grid)
        self.stop = stop
        self.poll = SIMULATION_POLL_S if is_simulation_grid(grid) else POLL_S

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        self._check()
        pending = set(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while pending:
            self._check()
            pulled = list(self.pull_messages(pending))
            replies += pulled
            pending -= {reply.metadata.reply_to_message_id for reply in pulled}
            if not pending or (deadline is not None and time.monotonic() >= deadline):
                break
            self.stop.wait(self.poll)
        return replies

    def _check(self) -> None:
        if self.stop.is_set():
            raise RunInterrupted("the run was interrupted")


class Interruptible:
    """Wraps a ServerApp's main function so that a signal during `signals()` stops it promptly.

    Use `serve` as the ServerApp's main function and run the simulation inside `with signals():`.
    The first Ctrl-C (or SIGTERM) only sets the stop flag: the server ends at its next wait for
    clients, the clients finish the message in hand, Flower stops Ray as after a finished run, and
    `signals()` then raises KeyboardInterrupt. Interrupting Flower's main thread instead leaves its
    workers blocked on Ray results forever. A second Ctrl-C raises KeyboardInterrupt at once. Ray's
    own processes must ignore SIGINT (`fedlayer.simulation.started_ray` sees to it).
    """

    def __init__(self, main: Callable[[Grid, Context], None]) -> None:
        self.main = main
        self.stop = threading.Event()
        self.interrupted = False  # by a signal (the stop flag is also set when the simulation ends)

    def serve(self, grid: Grid, context: Context) -> None:
        if not self.stop.is_set():
            self.main(StoppableGrid(grid, self.stop), context)

    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        """SIGINT and SIGTERM (unless ignored, as in a background job) stop the server; the block
        then ends with KeyboardInterrupt."""
        if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
            yield
            return

        def interrupt(signum: int, frame: object) -> None:
            if self.interrupted:
                raise KeyboardInterrupt
            self.interrupted = True
            self.stop.set()

        caught = [sig for sig in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(sig) is not signal.SIG_IGN]
        previous = {sig: signal.signal(sig, interrupt) for sig in caught}
        try:
            yield
        except RunInterrupted:
            raise KeyboardInterrupt from None
        finally:
            self.stop.set()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if self.interrupted:
            raise KeyboardInterrupt
