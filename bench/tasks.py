"""The baseline: a raw Celery task that does next to nothing, on the same app and broker."""

import os
import time

from toppcloud_site.celery import app


@app.task(name="bench.raw_noop", acks_late=True, ignore_result=True)
def raw_noop(marker_path, sent_at=None):
    # One appended line per task, so the bench can count them without a result backend.
    line = f"{time.time() - sent_at:.6f}\n" if sent_at is not None else "x\n"
    fd = os.open(marker_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@app.task(name="bench.raw_beat_tick", ignore_result=True)
def raw_beat_tick(marker_path):
    """The cron baseline: a plain task beat sends every minute; records how far past the minute it started."""
    now = time.time()
    boundary = now - now % 60
    with open(marker_path, "a") as f:
        f.write(f"{boundary:.0f} {now - boundary:.6f}\n")
