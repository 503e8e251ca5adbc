"""A job that does nothing, optionally slowly: benchmarks and fault tests."""

import time



def noop(ctx, seconds=0.0, mark=False):
    if mark:
        # One event per execution, so a test can count how often it ran.
        ctx.emit("noop.ran", attempt=ctx.attempt)
    if seconds:
        time.sleep(float(seconds))
    return "nothing done, as asked"
