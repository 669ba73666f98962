"""Process lifecycle shared by the services: stop cleanly on SIGTERM (Kubernetes) or SIGINT."""

from __future__ import annotations

import signal
import threading


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT; the main thread waits on it, then drains and exits.

    Kubernetes sends SIGTERM and waits ``terminationGracePeriodSeconds`` before SIGKILL, so a
    service must turn that signal into an orderly stop (health NOT_SERVING, in-flight work
    finished) rather than die mid-request.
    """
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop
