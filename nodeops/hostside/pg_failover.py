# Failover on a node's PostgreSQL cluster (nodeops/failover.py sends it):
#
#   pg_failover fence CLUSTER JOB       the old primary: stopped (-m fast), start.conf `manual`
#   pg_failover promote CLUSTER WAIT    the replica: pg_promote(true, WAIT), out of recovery
#   pg_failover state CLUSTER           running? in recovery? (promote's pre-check)
#
# Each prints one JSON line: what it found and what it did. Running one twice
# leaves the node as running it once does (a fenced cluster stays fenced, a
# promoted one stays primary). The superuser is used on the local socket only.
import glob, json, os, re, subprocess, sys, time

FENCE_MARK = "# Fenced by toppcloud"


def fail(message):
    sys.exit(message)


def version_of(cluster):
    found = sorted(p.split("/")[3] for p in glob.glob(f"/etc/postgresql/*/{cluster}/postgresql.conf"))
    if not found:
        fail(f"there is no PostgreSQL cluster {cluster!r} on this node (/etc/postgresql/*/{cluster})")
    return found[-1]


def running(version, cluster):
    # pg_ctlcluster status: 0 running, 3 not running, 4 no data directory.
    return subprocess.run(["pg_ctlcluster", version, cluster, "status"], capture_output=True).returncode == 0


def psql(version, cluster, sql):
    with open(f"/etc/postgresql/{version}/{cluster}/postgresql.conf") as f:
        m = re.search(r"^\s*port\s*=\s*(\d+)", f.read(), re.MULTILINE)
    port = m.group(1) if m else "5432"
    argv = ["runuser", "-u", "postgres", "--", f"/usr/lib/postgresql/{version}/bin/psql", "-X", "-q", "-At",
            "-v", "ON_ERROR_STOP=1", "-p", port, "-d", "postgres"]
    r = subprocess.run(argv, input=sql.encode(), capture_output=True, timeout=120)
    if r.returncode != 0:
        fail(f"psql on {version}/{cluster}: {r.stderr.decode(errors='replace').strip()[-1500:]}")
    return r.stdout.decode().strip()


def start_conf(version, cluster):
    path = f"/etc/postgresql/{version}/{cluster}/start.conf"
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return path, "auto", ""
    words = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return path, (words[0] if words else "auto"), text


def fence(cluster, job):
    version = version_of(cluster)
    was_running = running(version, cluster)
    stopped_by = None
    if was_running:
        r = subprocess.run(["pg_ctlcluster", version, cluster, "stop", "-m", "fast"], capture_output=True,
                           timeout=120)
        stopped_by = "fast"
        if r.returncode != 0 and running(version, cluster):
            # A fast stop waits for nothing but a checkpoint; one that fails leaves only this.
            subprocess.run(["pg_ctlcluster", version, cluster, "stop", "-m", "immediate"], capture_output=True,
                           timeout=120)
            stopped_by = "immediate"
        if running(version, cluster):
            fail(f"cluster {version}/{cluster} is still running after pg_ctlcluster stop: "
                 f"{r.stderr.decode(errors='replace').strip()[-500:]}")
    path, was, text = start_conf(version, cluster)
    if was != "manual" or FENCE_MARK not in text:
        tmp = path + ".toppcloud.tmp"
        with open(tmp, "w") as f:
            f.write(f"{FENCE_MARK} (promote job {job}): another node is the primary now. Nothing starts\n"
                    "# this cluster; `replica add` makes it a replica of the new primary.\n"
                    "manual\n")
        st = os.stat(path) if os.path.exists(path) else None
        if st:
            os.chown(tmp, st.st_uid, st.st_gid)
            os.chmod(tmp, st.st_mode & 0o777)
        os.replace(tmp, path)
    return {"version": version, "was_running": was_running, "stopped": stopped_by, "start_conf_was": was,
            "start_conf": "manual"}


def in_recovery(version, cluster):
    return psql(version, cluster, "SELECT pg_is_in_recovery();") == "t"


def state(cluster):
    version = version_of(cluster)
    if not running(version, cluster):
        return {"version": version, "running": False}
    found = {"version": version, "running": True, "in_recovery": in_recovery(version, cluster)}
    if found["in_recovery"]:
        found["replay_lsn"] = psql(version, cluster, "SELECT pg_last_wal_replay_lsn();")
    return found


def promote(cluster, wait):
    version = version_of(cluster)
    if not running(version, cluster):
        fail(f"cluster {version}/{cluster} is not running: a replica is promoted while it runs")
    started = time.monotonic()
    was = in_recovery(version, cluster)
    found = {"version": version, "was_in_recovery": was}
    if was:
        found["replay_lsn"] = psql(version, cluster, "SELECT pg_last_wal_replay_lsn();")
        answer = psql(version, cluster, f"SELECT pg_promote(true, {int(wait)});")
        deadline = time.monotonic() + wait
        while in_recovery(version, cluster):
            if time.monotonic() > deadline:
                fail(f"cluster {version}/{cluster} is still in recovery {wait} s after pg_promote "
                     f"(it answered {answer!r})")
            time.sleep(0.1)
    # What pg_basebackup -R wrote is the old primary's address (and how to log in there): a primary
    # has no use for it, and it must not send a future standby of this node to the old one.
    psql(version, cluster, "ALTER SYSTEM RESET primary_conninfo;\nALTER SYSTEM RESET primary_slot_name;\n"
                           "SELECT pg_reload_conf();")
    found["lsn"] = psql(version, cluster, "SELECT pg_current_wal_lsn();")
    found["synchronous_standby_names"] = psql(version, cluster, "SHOW synchronous_standby_names;")
    found["promote_seconds"] = round(time.monotonic() - started, 3)
    return found


def main(argv):
    if len(argv) < 2 or argv[0] not in ("fence", "promote", "state"):
        fail("usage: pg_failover fence CLUSTER JOB | promote CLUSTER WAIT | state CLUSTER")
    command, cluster = argv[0], argv[1]
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", cluster):
        fail(f"cluster name {cluster!r} is invalid")
    if os.geteuid() != 0:
        fail("pg_failover needs root on the node (pg_ctlcluster, the cluster's start.conf)")
    if command == "fence":
        result = fence(cluster, argv[2] if len(argv) > 2 else "?")
    elif command == "promote":
        result = promote(cluster, int(argv[2]) if len(argv) > 2 else 60)
    else:
        result = state(cluster)
    print(json.dumps(result, sort_keys=True))


main(sys.argv[1:])
