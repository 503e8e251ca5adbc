"""Is the node there, and how busy is it?"""

from .steps import run_logged


def ping(t, emit, root=None):
    """Round trip, uptime, load, memory and (with root) the free space of the disk holding the node root."""
    # One command for the readings in /proc: its duration is the round trip.
    r = run_logged(t, emit, ["cat", "/proc/uptime", "/proc/loadavg", "/proc/meminfo"], step="ping")
    lines = r.stdout.splitlines()
    uptime_line, load_line = lines[:2]
    load = [float(x) for x in load_line.split()[:3]]
    data = {
        "round_trip_seconds": round(r.seconds, 4),
        "uptime_seconds": float(uptime_line.split()[0]),
        "load1": load[0],
        "load5": load[1],
        "load15": load[2],
    }
    meminfo = dict(line.split(":", 1) for line in lines[2:] if ":" in line)
    if "MemTotal" in meminfo and "MemAvailable" in meminfo:
        data["mem_total_bytes"] = _kib(meminfo["MemTotal"])
        data["mem_available_bytes"] = _kib(meminfo["MemAvailable"])
    if root is not None:
        # POSIX df: one header line, then "fs 1024-blocks used available capacity mount".
        # A node not set up yet has no root: no disk figure then, the rest still answers.
        d = run_logged(t, emit, ["df", "-P", "-k", "--", root], step="ping", check=False)
        fields = d.stdout.splitlines()[-1].split() if d.rc == 0 and d.stdout.strip() else []
        if len(fields) >= 4 and fields[1].isdigit() and fields[3].isdigit():
            data["disk_total_bytes"] = int(fields[1]) * 1024
            data["disk_free_bytes"] = int(fields[3]) * 1024
    emit("node.ping", **data)
    return data


def _kib(value):
    return int(value.split()[0]) * 1024
