"""How far a long operation is, as `progress` events a person can follow (`manage.py deploy`, `backup`, ...).

    progress = Progress(emit, "backup", "bytes")
    progress.add(len(chunk))     # as often as you like: an event at most every INTERVAL seconds
    progress.finish()            # the last figure, always

Each event says what, the unit (bytes, packages, rows), how many are done,
the total when it is known (then the follower shows a percentage and an
estimate of the time left) and the seconds since the start. Never one per
file or per chunk: a job's event log stays readable and small.
"""

import threading
import time

from .steps import _emit_command
from .transport import CommandFailed, CommandResult, CommandTimeout

INTERVAL = 0.5  # seconds between two events of one operation, at least


class Progress:
    def __init__(self, emit, what, unit, total=None, *, interval=INTERVAL, clock=time.monotonic):
        self.emit, self.what, self.unit, self.total = emit, what, unit, total
        self.interval, self.clock = interval, clock
        self.done = 0
        self.started = clock()
        self.last = self.started  # the first event comes after one interval: a quick operation emits none but the last
        self.lock = threading.Lock()  # add() may be called from a reading thread; events are emitted by tick()/finish()
        self.finished = False

    def add(self, n, emit=True):
        """Count n more; emit an event if the last one is INTERVAL old (emit=False: count only, from a thread)."""
        with self.lock:
            self.done += n
        if emit:
            self.tick()

    def tick(self):
        now = self.clock()
        if now - self.last >= self.interval and not self.finished:
            self.last = now
            self._emit(now)

    def finish(self, done=None):
        """The last event: the final figure (done, if given, replaces the count)."""
        if self.finished:
            return
        if done is not None:
            self.done = done
        self.finished = True
        self._emit(self.clock())

    def _emit(self, now):
        data = {"what": self.what, "unit": self.unit, "done": self.done, "seconds": round(now - self.started, 3)}
        if self.total is not None:
            data["total"] = self.total
        self.emit("progress", **data)


class CountingReader:
    """A file object's reads, counted into a Progress (what a stream into an archive passes through)."""

    def __init__(self, raw, progress):
        self.raw, self.progress = raw, progress

    def read(self, n=-1):
        data = self.raw.read(n)
        self.progress.add(len(data))
        return data

    def __getattr__(self, name):
        return getattr(self.raw, name)


def run_counting(t, emit, argv, *, step, what, unit, counts, timeout=None):
    """t.run(argv) for a long command whose output says how far it is: each stdout line that
    counts(line) is true of adds one to a Progress (pip's `Collecting NAME`: packages). Emits the
    same `command` event as steps.run_logged, raising CommandFailed (CommandTimeout) the same way."""
    stream = t.open(argv)
    stream.stdin.close()
    progress = Progress(emit, what, unit)
    timer = threading.Timer(timeout, stream.kill) if timeout else None
    if timer:
        timer.daemon = True
        timer.start()
    lines = []
    try:
        for raw in stream.stdout:
            line = raw.decode("utf-8", errors="replace")
            lines.append(line)
            if counts(line):
                progress.add(1)
        result = stream.finish(check=False)
    finally:
        if timer:
            timer.cancel()
    progress.finish()
    result = CommandResult(result.argv, result.rc, "".join(lines), result.stderr, result.seconds)
    timed_out = timer is not None and result.seconds >= timeout
    _emit_command(emit, step, result)
    if timed_out:
        raise CommandTimeout(result, t.describe(), timeout)
    if result.rc != 0:
        raise CommandFailed(result, t.describe())
    return result
