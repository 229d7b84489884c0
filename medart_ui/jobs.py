"""Background work of the app: started at once, run in a thread, state kept for whoever asks.

It loads the generator at start, so a person's first Generate does not pay for the load, and
follows the training runs (medart_ui.training_runner), whose trainers run as subprocesses.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

logger = logging.getLogger("medart.app")


@dataclass
class Job:
    name: str
    state: str = "running"  # running | done | failed
    error: str = ""
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    thread: threading.Thread | None = None

    def wait(self, timeout: float | None = None) -> bool:
        """True when the job has finished (either way) within `timeout` seconds."""
        self.thread.join(timeout)
        return self.state != "running"


class Jobs:
    """The app's background jobs by name."""

    def __init__(self):
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def start(self, name: str, function) -> Job:
        job = Job(name)

        def run():
            try:
                function()
                job.state = "done"
                logger.info("%s: done in %.1f s", name, time.monotonic() - job.started)
            except Exception as err:  # logged; whoever needs the result meets the error again
                job.state, job.error = "failed", str(err)
                logger.exception("%s failed", name)
            finally:
                job.finished = time.monotonic()

        job.thread = threading.Thread(target=run, name=f"medart-{name}", daemon=True)
        with self._lock:
            self._jobs[name] = job
        job.thread.start()
        return job

    def get(self, name: str) -> Job | None:
        with self._lock:
            return self._jobs.get(name)
