"""Is the node there, and how busy is it?"""

from .steps import run_logged


def ping(t, emit):
    # One command for all readings: its duration is the round trip.
    r = run_logged(t, emit, ["cat", "/proc/uptime", "/proc/loadavg"], step="ping")
    uptime_line, load_line = r.stdout.splitlines()[:2]
    load = [float(x) for x in load_line.split()[:3]]
    data = {
        "round_trip_seconds": round(r.seconds, 4),
        "uptime_seconds": float(uptime_line.split()[0]),
        "load1": load[0],
        "load5": load[1],
        "load15": load[2],
    }
    emit("node.ping", **data)
    return data
