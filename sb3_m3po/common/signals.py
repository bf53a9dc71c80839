"""Holding Ctrl-C while a file is being written, so an interrupted run keeps a loadable model."""

import contextlib
import signal
import threading
from collections.abc import Iterator


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
