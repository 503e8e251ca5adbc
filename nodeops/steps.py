"""Steps and command logging: how nodeops reports what it does.

`emit(kind, **data)` is the caller's callback; jobs turns each call into a
JobEvent (capping and redacting output there, not here).
"""

import time
from contextlib import contextmanager

from . import hostside
from .transport import CommandFailed


class StepInfo:
    """Yielded by step(); set .changed (and .data) to report them in step.finished."""

    def __init__(self, name):
        self.name = name
        self.changed = None
        self.data = {}


@contextmanager
def step(emit, name):
    emit("step.started", step=name)
    info = StepInfo(name)
    started = time.monotonic()
    try:
        yield info
    except BaseException as exc:
        emit("step.finished", step=name, ok=False, seconds=round(time.monotonic() - started, 3),
             error=str(exc) or type(exc).__name__)
        raise
    extra = dict(info.data)
    if info.changed is not None:
        extra["changed"] = bool(info.changed)
    emit("step.finished", step=name, ok=True, seconds=round(time.monotonic() - started, 3), **extra)


def run_logged(t, emit, argv, step=None, **kw):
    """t.run(argv, **kw), emitting a `command` event even when it fails."""
    try:
        result = t.run(argv, **kw)
    except CommandFailed as exc:
        _emit_command(emit, step, exc.result)
        raise
    _emit_command(emit, step, result)
    return result


def _emit_command(emit, step, r):
    emit("command", step=step, argv=hostside.label(r.argv), rc=r.rc, stdout=r.stdout, stderr=r.stderr,
         seconds=round(r.seconds, 3))
