"""Failover of a group's PostgreSQL: fence the old primary, promote a replica.

The work on the node is nodeops/hostside/pg_failover.py; these functions run
it over a transport and report through `emit`. Each is idempotent: a fenced
cluster fenced again stays stopped, a promoted one promoted again stays the
primary, so a promote job that failed half way can simply run again.
"""

import json

from . import hostside
from .errors import NodeOpError
from .release import PYTHON
from .steps import run_logged
from .transport import CommandFailed, CommandTimeout
from .validate import validate_name


class FailoverError(NodeOpError):
    """A cluster could not be fenced or promoted; the message says which and why."""


def _run(t, emit, step, *args, timeout=180):
    argv = [PYTHON, "-I", "-c", hostside.source("pg_failover"), *args]
    try:
        r = run_logged(t, emit, argv, step=step, timeout=timeout)
    except CommandFailed as exc:
        tail = exc.result.stderr.strip().splitlines()[-1:] or [f"exit code {exc.result.rc}"]
        raise FailoverError(f"{step} on {t.describe()}: {tail[0]}") from None
    return json.loads(r.stdout.strip().splitlines()[-1])


class NotAnswering(FailoverError):
    """The node did not answer over ssh within the time given (a host that vanished drops no RST)."""


def fence(t, emit, cluster, job, answer_within=15) -> dict:
    """Stop the cluster (-m fast) and set its start.conf to `manual`, so nothing starts it again.

    {version, was_running, stopped: "fast"|"immediate"|None, start_conf_was, start_conf}. A node that
    refuses the connection raises TransportError; one that does not answer `true` within
    `answer_within` seconds (a stale ssh master to a vanished host waits far longer) NotAnswering:
    the caller judges whether to go on."""
    try:
        t.run(["true"], timeout=answer_within)
    except CommandTimeout:
        raise NotAnswering(f"{t.describe()} did not answer within {answer_within} s") from None
    return _run(t, emit, "fence", "fence", validate_name(cluster, "pg_cluster"), str(job))


def state(t, emit, cluster) -> dict:
    """{version, running, in_recovery, replay_lsn}: what the cluster is now."""
    return _run(t, emit, "state", "state", validate_name(cluster, "pg_cluster"))


def promote(t, emit, cluster, wait=60) -> dict:
    """pg_promote(true, wait) on the replica's cluster and wait until it is out of recovery;
    {version, was_in_recovery, replay_lsn, lsn, promote_seconds, synchronous_standby_names}."""
    return _run(t, emit, "promote", "promote", validate_name(cluster, "pg_cluster"), str(int(wait)),
                timeout=wait + 60)
