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
        self.rows = None  # a CopyRows, when the bytes are a database dump's: its rows go in each event

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
        if self.rows is not None:
            data["rows"] = self.rows.rows
        self.emit("progress", **data)


class CountingReader:
    """A file object's reads, counted into a Progress (what a stream into an archive passes through);
    with rows=CopyRows(), the rows of the SQL dump it carries too."""

    def __init__(self, raw, progress, rows=None):
        self.raw, self.progress, self.rows = raw, progress, rows

    def read(self, n=-1):
        data = self.raw.read(n)
        if self.rows is not None:
            self.rows.feed(data)
        self.progress.add(len(data))
        return data


class CopyRows:
    """The rows of a plain SQL dump as it streams past: the lines between `COPY ... FROM stdin;` and `\\.`.

    Works on whole chunks with bytes.find and bytes.count (a million rows cost milliseconds); only an
    incomplete last line is kept between chunks, so every position it looks at starts a line.
    """

    HEADER_END, END = b" FROM stdin;\n", b"\\.\n"

    def __init__(self):
        self.rows, self.in_copy, self.carry = 0, False, b""

    def feed(self, chunk):
        data, pos = self.carry + chunk, 0
        while True:
            if self.in_copy:
                if data.startswith(self.END, pos):
                    pos, self.in_copy = pos + len(self.END), False
                    continue
                end = data.find(b"\n" + self.END, pos)
                if end != -1:
                    self.rows += data.count(b"\n", pos, end + 1)
                    pos, self.in_copy = end + 1 + len(self.END), False
                    continue
                last = data.rfind(b"\n", pos) + 1
                self.rows += data.count(b"\n", pos, last)
                self.carry = data[max(last, pos):]
                return
            header = data.find(self.HEADER_END, pos)
            if header == -1:
                self.carry = data[max(data.rfind(b"\n", pos) + 1, pos):]
                return
            line = data.rfind(b"\n", pos, header) + 1 if data.rfind(b"\n", pos, header) != -1 else pos
            self.in_copy = data.startswith(b"COPY ", line)
            pos = header + len(self.HEADER_END)

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
