"""Stopping a training run cleanly on Ctrl-C (SIGINT) or SIGTERM (schedulers, preemption)."""

from __future__ import annotations

import signal

from tqdm import tqdm


class StopSignals:
    """Ctrl-C (SIGINT) and SIGTERM (schedulers, preemption) ask the run to stop: it finishes the
    optimizer step under way, writes last.pth and exits. A second Ctrl-C stops at once (the
    last checkpoint on disk stays intact)."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self) -> StopSignals:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum
        tqdm.write(f"train: {signal.Signals(signum).name} received: stopping after this "
                   "optimizer step and saving a checkpoint (Ctrl-C again to stop at once)")


class TrainingStopped(Exception):
    """Raised once last.pth is written after a stop signal; the process exits 128 + signum."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
