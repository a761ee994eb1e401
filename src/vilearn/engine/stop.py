"""Stopping a training loop without losing work: signals become a flag the loop checks after
each step (it then saves), and an unexpected exception is reported after the loop saved the
last completed step."""

from __future__ import annotations

import signal
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

from vilearn.io import write_text


class StopSignal:
    """Turns SIGTERM / SIGINT into a flag the loop checks after each step (then it saves)."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self) -> StopSignal:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay with their owner
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.received is not None:  # a second signal: give up at once
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class TrainingFailed(RuntimeError):
    """Training stopped on an unexpected exception (its ``__cause__``) after ``step`` completed
    steps, whose state is in ``checkpoint`` (None when nothing new was done)."""

    def __init__(self, step: int, checkpoint: Path | None, error: BaseException):
        saved = (f"the state after step {step} is saved in {checkpoint}" if checkpoint
                 else "no step since the last checkpoint")
        super().__init__(f"training stopped at step {step}: {type(error).__name__}: {error} ({saved})")
        self.step, self.checkpoint = step, checkpoint


class TrainingGuard(StopSignal):
    """``StopSignal`` for a training loop, plus what happens on an unexpected exception leaving
    the ``with`` block: the state after ``step`` completed steps is saved (``save(step)``)
    unless the newest checkpoint (``saved``) holds it already, the traceback goes to
    ``RUN/error.txt`` and the log, and the exception becomes ``TrainingFailed``. Exceptions of
    the ``keep`` types (bad input found late) are saved for but propagate as they are.

    The loop keeps ``step`` and ``saved`` current. The optimizer's update is the last thing a
    step does, so an exception inside a step leaves the state of the step before. Only the main
    process saves (``main``); the others re-raise. ``writer`` (TensorBoard) is closed on exit.
    ``replaced`` counts the training items replaced because their files could not be read
    (``note_replaced``).
    """

    def __init__(self, out: Path, logger, save: Callable[[int], Path], main: bool = True,
                 keep: tuple[type[BaseException], ...] = (), start: int = 0, writer=None):
        super().__init__()
        self.out, self.logger, self.save, self.main, self.keep = Path(out), logger, save, main, keep
        self.step = self.saved = start
        self.writer, self.replaced = writer, Counter()

    def save_if_due(self, step: int, every: int, last: int, barrier: Callable[[], None],
                    interrupted: bool | None = None) -> bool:
        """After step ``step``: save at multiples of ``every``, at ``last`` and when a signal
        came (all processes meet at ``barrier`` first). ``interrupted``: the processes' agreed
        answer to "did a signal come" (default: this process's own). Returns whether a signal
        came: the loop then stops."""
        if interrupted is None:
            interrupted = self.received is not None
        if step % every == 0 or step == last or interrupted:
            barrier()
            if self.main:
                self.save(step)
            self.saved = step
        return interrupted

    def note_replaced(self, problems: Iterable[str], what: str = "training item") -> None:
        """Count unreadable-file problems (``"FILE: what is wrong"``), warning once per file."""
        for problem in problems:
            if problem not in self.replaced:
                warnings.warn(f"{what} replaced: {problem}", stacklevel=3)
            self.replaced[problem] += 1

    def __exit__(self, kind, error, tb):
        super().__exit__(kind, error, tb)
        if self.writer is not None:
            self.writer.close()
        if not isinstance(error, Exception) or not self.main:
            return False  # clean exit, KeyboardInterrupt (a second signal), or not ours to save
        checkpoint = self.save(self.step) if self.step > self.saved else None
        if isinstance(error, self.keep):
            return False
        write_text(self.out / "error.txt", "".join(traceback.format_exception(kind, error, tb)))
        self.logger.log({"step": self.step, "error": f"{type(error).__name__}: {error}"})
        raise TrainingFailed(self.step, checkpoint, error) from error
