"""The one way in for every job kind: the only caller of dispatch.submit outside the engine.

Each function takes the records or names the job needs and who asks (actor_kind=..., actor=...), builds
the job's target and params, refuses what would fail before any job exists (a node record that is not
valid: InvalidNode; an unknown cron entry: CronRefused) and queues the job. Management commands, the admin,
the task API, beat's tasks and the benches call these; none of them calls submit itself.
"""

import logging

from jobs.engine import dispatch, events
from jobs.engine.states import TERMINAL, ActorKind
from jobs.models import Job
from jobs.nodes import InvalidNode, check_node
from jobs.steps import cron, failover, replication
from toppcloud_site.records.models import Node

log = logging.getLogger(__name__)
RECONCILE_SCHEDULE = "toppcloud-reconcile-nodes"  # beat's entry: the actor of the periodic reconciles


def _with_node(params, node):
    return {**params, **({"node": node} if node else {})}


# Nodes

def node_job(kind, node, *, actor_kind, actor):
    """A job that acts on one node (setup_node, reconcile_node, ping_node): the node record is checked first."""
    check_node(node)
    return dispatch.submit(kind, target=f"node:{node.name}", params={"node": node.name},
                           actor_kind=actor_kind, actor=actor)


def reconcile_nodes():
    """Beat's periodic reconcile: one reconcile_node job for each node that is set up, unless one for it
    is queued or running already. A bad node record is logged and skipped, the others still run."""
    busy = set(Job.objects.filter(kind="reconcile_node").exclude(status__in=TERMINAL).values_list("target", flat=True))
    jobs = []
    for node in Node.objects.filter(set_up_at__isnull=False).order_by("name"):
        if f"node:{node.name}" in busy:
            continue
        try:
            jobs.append(reconcile_node(node, actor_kind=ActorKind.SCHEDULE, actor=RECONCILE_SCHEDULE).pk)
        except InvalidNode as exc:
            log.warning("reconcile: %s", exc)
    return jobs


def setup_node(node, *, actor_kind, actor):
    return node_job("setup_node", node, actor_kind=actor_kind, actor=actor)


def reconcile_node(node, *, actor_kind, actor):
    return node_job("reconcile_node", node, actor_kind=actor_kind, actor=actor)


def ping_node(node, *, actor_kind, actor):
    return node_job("ping_node", node, actor_kind=actor_kind, actor=actor)


def promote(node, *, old_primary_is_down=False, actor_kind, actor):
    """Make a streaming replica its group's primary: fence the old one, pg_promote, repoint the apps.
    PromoteRefused unless NODE is a db-replica of its group's database node."""
    check_node(node)
    failover.check_promote(node)
    params = {"node": node.name, **({"old_primary_is_down": True} if old_primary_is_down else {})}
    return dispatch.submit("promote", target=f"group:{node.group.name}", params=params, actor_kind=actor_kind,
                           actor=actor)


# Releases

def deploy_plan(app_name, release_name, node):
    """The deploy job of one node, as deploy_many's children list it."""
    return {"kind": "deploy", "target": f"app:{app_name}@{node.name}",
            "params": {"app": app_name, "release": release_name, "node": node.name}}


def deploy(app_name, release_name, node, *, actor_kind, actor):
    """Deploy the app's release to one node."""
    check_node(node)
    plan = deploy_plan(app_name, release_name, node)
    return dispatch.submit("deploy", target=plan["target"], params=plan["params"], actor_kind=actor_kind,
                           actor=actor)


def deploy_many(app_name, release_name, nodes, *, max_parallel, actor_kind, actor):
    """Deploy the app's release to several nodes, max_parallel at once (one deploy child per node)."""
    for node in nodes:
        check_node(node)  # each child would refuse it too, but only after the parent started
    plans = [deploy_plan(app_name, release_name, n) for n in nodes]
    return dispatch.submit("deploy_many", target=f"app:{app_name}@{len(nodes)} nodes", actor_kind=actor_kind,
                           actor=actor, params={"app": app_name, "release": release_name, "children": plans,
                                                "max_parallel": max_parallel})


def deploy_to(app_name, release_name, nodes, *, max_parallel=4, actor_kind, actor):
    """deploy for one node, deploy_many for several."""
    if len(nodes) == 1:
        return deploy(app_name, release_name, nodes[0], actor_kind=actor_kind, actor=actor)
    return deploy_many(app_name, release_name, nodes, max_parallel=max_parallel, actor_kind=actor_kind, actor=actor)


def refuse_deploy(app_dir, error, *, app_name="", nodes=(), actor_kind, actor):
    """Record a deploy refused before any job was queued (bad app.ini or archive, config missing): a failed
    deploy job that no worker runs, its error the refusal, so the attempt shows in the job list."""
    names = sorted(n.name for n in nodes)
    target = f"app:{app_name or '?'}" + (f"@{names[0]}" if len(names) == 1 else f"@{len(names)} nodes" if names else "")
    params = {"app": app_name, "app_dir": str(app_dir), "nodes": names}
    return events.refused_job("deploy", target=target, params=params, actor_kind=actor_kind, actor=actor,
                              error=error)


def rollback(app_name, node, *, release=None, actor_kind, actor):
    """Make the app's previous release (or the named one) live again on the node."""
    check_node(node)
    params = {"app": app_name, "node": node.name, **({"release": release} if release else {})}
    return dispatch.submit("rollback", target=f"app:{app_name}@{node.name}", params=params,
                           actor_kind=actor_kind, actor=actor)


# Data

def backup(app_name, *, node=None, copy_to=None, from_replica=False, actor_kind, actor):
    params = _with_node({"app": app_name}, node)
    if copy_to:
        params["copy_to"] = copy_to
    if from_replica:
        params["from_replica"] = True
    return dispatch.submit("backup", target=f"app:{app_name}", params=params, actor_kind=actor_kind, actor=actor)


def restore(app_name, backup_name, *, node=None, checkpoint=True, actor_kind, actor):
    params = _with_node({"backup": backup_name, "app": app_name}, node)
    if not checkpoint:
        params["checkpoint"] = False
    return dispatch.submit("restore", target=f"app:{app_name}", params=params, actor_kind=actor_kind, actor=actor)


def clear(app_name, *, node=None, actor_kind, actor):
    return dispatch.submit("clear", target=f"app:{app_name}", params=_with_node({"app": app_name}, node),
                           actor_kind=actor_kind, actor=actor)


# Cron

def cron_run(app_name, entry_name, *, actor_kind, actor, scheduled_at=None):
    """Queue a cron_run job of the entry (CronRefused if the app or entry is unknown); scheduled_at: when
    beat sent it (the run's delay is measured from the minute it belongs to)."""
    _, entry = cron.check_entry(app_name, entry_name)
    params = {"app": app_name, "entry": entry_name}
    scheduled_for = cron.scheduled_minute(entry, scheduled_at) if scheduled_at is not None else None
    if scheduled_for is not None:
        params["scheduled_for"] = scheduled_for.isoformat()
    return dispatch.submit("cron_run", target=f"cron:{app_name}:{entry_name}", params=params,
                           actor_kind=actor_kind, actor=actor)


# Tasks (the task API)

def task(app_name, params, *, run_after=None, actor_kind, actor):
    """Queue a task job: an HTTP request to the app (params: path, payload, max_attempts, timeout, ...)."""
    return dispatch.submit("task", target=f"task:{app_name}{params['path'].split('?')[0]}"[:200], params=params,
                           actor_kind=actor_kind, actor=actor, run_after=run_after)


def retry_task(job, *, actor_kind, actor):
    """A new task job with a dead letter's request (its idempotency key still names the first job)."""
    params = {k: v for k, v in job.params.items() if k != "idempotency_key"}
    params["retry_of"] = job.pk
    return dispatch.submit("task", target=job.target, params=params, actor_kind=actor_kind, actor=actor)


# Config

def apply_config(app_names, *, target=None, actor_kind, actor):
    """Give the apps' running releases their config as it is now; target defaults to app:NAME or apps."""
    if target is None:
        target = f"app:{app_names[0]}" if len(app_names) == 1 else "apps"
    return dispatch.submit("apply_config", target=target, params={"apps": list(app_names)},
                           actor_kind=actor_kind, actor=actor)


def rotate_group_secret(group_name, *, actor_kind, actor):
    return dispatch.submit("rotate_group_secret", target=f"group:{group_name}", params={"group": group_name},
                           actor_kind=actor_kind, actor=actor)


# Replicas

def replica_add(node_name, group_name, *, actor_kind, actor):
    """Make the node a streaming replica of the group's primary (ReplicaRefused, with nothing queued,
    when it cannot be one: see replication.check_replica_add)."""
    node, group = replication.check_replica_add(node_name, group_name)
    check_node(node)
    check_node(group.database_node)
    return dispatch.submit("replica_add", target=f"node:{node.name}", params={"node": node.name, "group": group.name},
                           actor_kind=actor_kind, actor=actor)


def replica_check(group_name, *, actor_kind, actor):
    """Record the state and lag of the group's replicas as its primary sees them now."""
    group = replication.check_group_with_primary(group_name)
    check_node(group.database_node)
    return dispatch.submit("replica_check", target=f"group:{group.name}", params={"group": group.name},
                           actor_kind=actor_kind, actor=actor)


# Front door

def front_door(nodes, *, actor_kind, actor):
    """Queue one front_door job rendering these nodes from the records."""
    names = sorted(n.name for n in nodes)
    return dispatch.submit("front_door", target=f"node:{names[0]}" if len(names) == 1 else "nodes",
                           params={"nodes": names}, actor_kind=actor_kind, actor=actor)


def front_door_after_edit(app_ids, *, actor_kind, actor):
    """Locations of these apps were edited (admin, a group document): queue one front_door job for the
    nodes where any of them is live; None when none is (the app's first deploy renders them)."""
    nodes = list(Node.objects.filter(live__app_id__in=app_ids).distinct().order_by("name"))
    return front_door(nodes, actor_kind=actor_kind, actor=actor) if nodes else None


def app_job(kind, app_name, *, actor_kind, actor):
    """A job about an app with params {"app": name}: disable, enable."""
    return dispatch.submit(kind, target=f"app:{app_name}", params={"app": app_name}, actor_kind=actor_kind,
                           actor=actor)


def disable(app_name, *, actor_kind, actor):
    return app_job("disable", app_name, actor_kind=actor_kind, actor=actor)


def enable(app_name, *, actor_kind, actor):
    return app_job("enable", app_name, actor_kind=actor_kind, actor=actor)


# Running things in an app

def logs(app_name, *, node=None, lines, files, actor_kind, actor):
    return dispatch.submit("logs", target=f"app:{app_name}" + (f"@{node}" if node else ""), actor_kind=actor_kind,
                           params=_with_node({"app": app_name, "lines": lines, "files": files}, node), actor=actor)


def run(app_name, node, *, argv, timeout, actor_kind, actor):
    """Run a command in the app's environment on the node where it is live."""
    params = {"app": app_name, "argv": argv, "timeout": timeout, "node": node.name}
    return dispatch.submit("run", target=f"app:{app_name}@{node.name}", params=params, actor_kind=actor_kind,
                           actor=actor)


def noop(*, target="bench", actor_kind="system", actor="bench"):
    """A job that does nothing: the benches measure the engine with it."""
    return dispatch.submit("noop", target=target, actor_kind=actor_kind, actor=actor)


def bench(kind, params, *, actor_kind="system", actor="bench"):
    """A job of any kind about params["app"], as bench/common.py starts them."""
    return dispatch.submit(kind, target=f"app:{params['app']}", params=params, actor_kind=actor_kind, actor=actor)
