"""Stopping a run cleanly: SIGTERM, SIGUSR1 and SIGINT end it at the next chunk boundary, after a checkpoint.

Schedulers send SIGTERM before they kill a job (Slurm at preemption and at the time limit,
Kubernetes on eviction), and Slurm sends SIGUSR1 ahead of the time limit when asked
(`--signal=USR1@600`). Within `StopSignals` the first of these signals only sets a flag; the
training loop reads it after each chunk of work (`agree`), saves a checkpoint and raises
`Preempted`, which the command lines turn into one line and exit status 75 (130 for Ctrl-C).
A second Ctrl-C interrupts at once (the checkpoints on disk stay whole). With several
processes, every process takes the same decision at the same chunk: `agree` gathers every
process's flag, so a signal that reaches any of them stops them all there.
"""

import logging
import signal
import threading

from rsojax import sharding

log = logging.getLogger(__name__)

# What a process asks for at a chunk boundary, in increasing order of precedence: the largest
# over the processes is what they all do.
GO_ON, INTERRUPT, PREEMPT, FAILED = 0, 1, 2, 3
SIGNALS = {signal.SIGINT: INTERRUPT, signal.SIGTERM: PREEMPT, signal.SIGUSR1: PREEMPT}

# EX_TEMPFAIL (sysexits.h): "a temporary failure; the user is invited to retry". Distinct from
# an error (1), a bad command (2), a failed write (74) and a death by signal (128 + n: 143 for
# SIGTERM, 137 for SIGKILL), so a job script or a retry loop can tell "resumable: rerun" apart.
EXIT_PREEMPTED = 75
"""The exit status of a run stopped by SIGTERM or SIGUSR1 after a checkpoint: EX_TEMPFAIL,
"try again", apart from every status a failure or a killed process gives; requeue on it."""
EXIT_INTERRUPTED = 130
"""The exit status of a run stopped by Ctrl-C: 128 + SIGINT, as a shell reports it."""


class Preempted(Exception):
    """The run stopped on a signal, after a checkpoint; rerunning the same command resumes it."""

    def __init__(self, message: str, interrupted: bool):
        super().__init__(message)
        self.exit_status = EXIT_INTERRUPTED if interrupted else EXIT_PREEMPTED


class StopSignals:
    """While entered (in the main thread), SIGTERM, SIGUSR1 and SIGINT ask the run to stop at the
    next chunk boundary instead of killing it; the previous handlers come back on exit."""

    def __init__(self):
        self.received: signal.Signals | None = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # Python's rule for signal handlers
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _handle(self, signum, frame):
        if self.received is None:
            self.received = signal.Signals(signum)
            again = "; Ctrl-C again stops at once" if signum == signal.SIGINT else ""
            log.info("%s: stopping after the current chunk of work, with a checkpoint%s", self.received.name, again)
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt
        # A repeated SIGTERM or SIGUSR1 changes nothing: the checkpoint is on its way.

    def agree(self, failed: bool = False) -> int:
        """What every process does after this chunk: `GO_ON`, `INTERRUPT` (Ctrl-C), `PREEMPT`
        (SIGTERM, SIGUSR1) or `FAILED` (a process could not write), the same on every process.

        Args:
          failed: this process could not write a file of the run.
        """
        mine = FAILED if failed else SIGNALS.get(self.received, GO_ON)
        return max(sharding.process_values(mine))

    def name(self, decision: int) -> str:
        """The signal that stopped the run, as this process knows it."""
        if self.received is not None:
            return self.received.name
        return "Ctrl-C on another process" if decision == INTERRUPT else "a signal to another process"
