"""Ctrl-C during a sweep: stop the way Ray Tune stops on its own signal, and remember that it happened."""
from __future__ import annotations

import contextlib
import os
import signal
import threading


@contextlib.contextmanager
def interrupt_flag():
    """Ctrl-C stops the sweep as Tune's own handler would (state saved, running trials stopped; SIGUSR1
    is Tune's graceful stop) and sets the flag: `fit()` returns the same either way."""
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return

    def stop(signum, frame):
        interrupted.set()
        signal.signal(signal.SIGINT, previous)  # a second Ctrl-C aborts at once
        os.kill(os.getpid(), signal.SIGUSR1)

    previous = signal.signal(signal.SIGINT, stop)
    saved = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)
        if saved is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = saved
