"""Stopping on SIGINT / SIGTERM without losing work, in the main process and its DataLoader workers.

The main process: `StopRequest` records the first signal; the training loop then finishes the current mini-batch,
writes last.pt and stops. A second signal stops at once (KeyboardInterrupt), without saving.
The workers: Ctrl-C reaches the whole process group, and so does SIGTERM from Slurm, `docker stop` or
`kill -- -PGID`; they must keep serving batches while the main process saves (the trainer ends them afterwards), so
they ignore both (`ignore_stop_signals`), and are forked with both blocked (`stop_signals_held`) so that one sent
before they get there cannot kill them.
"""
from __future__ import annotations

import signal
from contextlib import contextmanager

STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


class StopRequest:
    """While entered (`with`): SIGINT / SIGTERM handlers that record the first signal in `signum`."""

    def __init__(self, log):
        self.signum: int | None = None
        self._log = log
        self._previous_handlers: dict = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> StopRequest:
        self._previous_handlers = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *_exception) -> None:
        for s, handler in self._previous_handlers.items():
            signal.signal(s, handler)

    def _on_signal(self, signum, _frame) -> None:
        if self.signum is not None:   # a second Ctrl-C: stop at once, without saving
            raise KeyboardInterrupt
        self.signum = signum
        self._log(f'\n{signal.Signals(signum).name}: saving last.pt after this batch (again to abort at once)')


def ignore_stop_signals(_worker_id) -> None:
    """A DataLoader worker_init_fn: the worker keeps serving batches while the main process saves."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)   # also discards one that arrived while held (below)
    if hasattr(signal, 'pthread_sigmask'):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


@contextmanager
def stop_signals_held():
    """Fork DataLoader workers inside this: they start with SIGINT / SIGTERM blocked (a child inherits the forking
    thread's mask), so one sent to the process group before `ignore_stop_signals` runs in a new worker cannot kill
    it (seen in CI: torch's worker re-raises a SIGTERM from anyone but its parent with the default action). The
    main process still gets the signal: at once through another of its threads (OpenMP's), else on release."""
    if not hasattr(signal, 'pthread_sigmask'):   # Windows: no masks (and spawned workers, no fork window)
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
