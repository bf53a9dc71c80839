"""Ctrl-C during training: held while a file is written, and always ending ``learn()`` with a loadable model."""

import contextlib
import signal
import threading
import warnings
from collections.abc import Iterator
from types import FrameType

from stable_baselines3.common.callbacks import BaseCallback


@contextlib.contextmanager
def deferred_keyboard_interrupt() -> Iterator[None]:
    """
    Delay SIGINT (Ctrl-C) until the block has finished, then deliver it to the previous handler.

    ``torch.save`` writes through a C++ writer that calls back into Python; a ``KeyboardInterrupt``
    raised inside that callback cannot unwind through C++ and aborts the whole process (and with it
    rl-zoo3's "save the model on Ctrl-C"). The saves made during training (best model, resumable
    checkpoints) therefore run with SIGINT held. Outside the main thread (where Python cannot set
    signal handlers), or where the SIGINT handler was not installed from Python (it could not be put
    back), the block runs unprotected.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is None:
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    # only reached when the block succeeded: a failing save keeps its own exception
    if received and callable(previous):
        previous(signal.SIGINT, None)


class StopOnInterrupt(BaseCallback):
    """
    Ends ``learn()`` at the next step once Ctrl-C was pressed: a backstop to the ``KeyboardInterrupt``.

    Python raises the ``KeyboardInterrupt`` in whatever code runs when it handles the signal. When that
    code is a finaliser (``__del__``, a weakref or garbage-collector callback) the exception is printed
    as "ignored" and lost, and training would go on as if Ctrl-C had not been pressed. While
    :meth:`installed` is active, SIGINT also sets a flag that this callback reads at every step, so
    ``learn()`` returns and the caller saves the model as after any Ctrl-C.
    """

    def __init__(self) -> None:
        super().__init__()
        self.requested = False

    @contextlib.contextmanager
    def installed(self) -> Iterator["StopOnInterrupt"]:
        """For the block, SIGINT sets ``requested`` before the usual handler runs (main thread, Python handler only)."""
        previous = signal.getsignal(signal.SIGINT)
        if previous is signal.SIG_IGN:
            # a shell without job control starts background commands (``cmd &``) with SIGINT ignored,
            # and Python then installs no KeyboardInterrupt handler: say so instead of leaving Ctrl-C dead
            warnings.warn(
                "SIGINT (Ctrl-C) is ignored in this process, as for commands started in the background by a "
                "shell: it will neither stop training nor save the model. Stop it with SIGTERM and continue "
                "from the latest checkpoint (train --checkpoint-freq), or start it in the foreground.",
                RuntimeWarning,
                stacklevel=3,
            )
        if threading.current_thread() is not threading.main_thread() or not callable(previous):
            yield self
            return

        def handle(signum: int, frame: FrameType | None) -> None:
            self.requested = True
            previous(signum, frame)  # the usual KeyboardInterrupt

        signal.signal(signal.SIGINT, handle)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)

    def _on_step(self) -> bool:
        return not self.requested
