"""The one way in for every job kind: the only caller of dispatch.submit outside the engine.

Each function takes the records or names the job needs and who asks (actor_kind=..., actor=...), builds
the job's target and params, refuses what would fail before any job exists (a node record that is not
valid: InvalidNode; an unknown cron entry: CronRefused) and queues the job. Management commands, the admin,
the task API, beat's tasks and the benches call these; none of them calls submit itself.
"""

import logging

from django.utils import timezone

from jobs.engine import dispatch, events
from jobs.engine.context import FlowFailed, node_transport
from jobs.engine.states import TERMINAL, ActorKind
from jobs.models import Job, LiveRelease
from jobs.nodes import InvalidNode, check_node
from jobs.steps import balancer as lb_steps, cron, failover, releases, replication, rolling
from nodeops.errors import NodeOpError
from toppcloud_site.records.models import App, Node

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


# Rolling through a group's balancer

class RolloutRefused(ValueError):
    """A rolling deploy or rollback that cannot start: the message says why; nothing was queued."""


def _rollout_nodes(group, batch):
    """(the group's lb node, its app nodes, the batch size) or RolloutRefused."""
    lb = lb_steps.lb_node(group)
    if lb is None:
        if batch is not None:
            raise RolloutRefused(f"server group {group.name} has no lb node: --batch rolls a group through its "
                                 f"balancer; without one, say how many nodes at once with --max-parallel")
        raise RolloutRefused(f"server group {group.name} has no lb node to roll its app nodes through")
    if lb.set_up_at is None:
        raise RolloutRefused(f"{lb.name}, the lb node of server group {group.name}, is not set up yet: "
                             f"manage.py setup_node {lb.name} first (the deploy rolls through its balancer)")
    nodes = lb_steps.app_nodes(group)
    if not nodes:
        raise RolloutRefused(f"server group {group.name} has no app nodes")
    try:
        size = rolling.parse_batch("1" if batch is None else batch, len(nodes))
    except rolling.BatchRefused as exc:
        raise RolloutRefused(str(exc)) from None
    for node in [lb, *nodes]:
        check_node(node)
    return lb, nodes, size


def _rollout(action, app_name, group, lb, nodes, size, plans, *, release, actor_kind, actor):
    if not plans:
        raise RolloutRefused(f"{app_name}: nothing to {action} on the app nodes of {group.name}")
    # The group's only app node is not drained: the balancer would have none to send requests to while it
    # changes; its own deploy or rollback keeps it serving (zero downtime on the node). Nor is the only node
    # where the app is live (out_of_rotation sees no other server UP), and a batch may not hold all of them.
    live = set(LiveRelease.objects.filter(app__name=app_name, node__in=nodes).values_list("node_id", flat=True))
    if len(live) > 1 and size >= len(live):
        raise RolloutRefused(f"a batch of {size} would take all {len(live)} app nodes where {app_name} is live out "
                             f"of rotation at once, leaving the balancer none to send requests to; at most "
                             f"--batch {len(live) - 1}")
    through = lb.name if len(nodes) > 1 else None
    for plan in plans:
        plan["params"]["lb"] = through
    batches = rolling.batch_sizes(len(plans), min(size, len(plans)))
    params = {"app": app_name, "action": action, "children": plans, "batches": batches, "lb": through,
              **({"release": release} if release else {})}
    return dispatch.submit("rolling", target=f"app:{app_name}@group:{group.name}", params=params,
                           actor_kind=actor_kind, actor=actor)


def deploy_rolling(app_name, release_name, group, *, batch=None, actor_kind, actor):
    """Deploy the app's release to the app nodes of a group with a balancer, batch nodes at a time ("1",
    "25%"; default 1): each child drains its node, deploys, checks it directly and puts it back; the first
    failure stops the rollout. RolloutRefused: no lb node, no app nodes, a bad batch."""
    lb, nodes, size = _rollout_nodes(group, batch)
    plans = [deploy_plan(app_name, release_name, n) for n in nodes]
    return _rollout("deploy", app_name, group, lb, nodes, size, plans, release=release_name,
                    actor_kind=actor_kind, actor=actor)


def rollback_rolling(app_name, group, *, release=None, batch=None, actor_kind, actor):
    """Roll the app back on the app nodes of a group with a balancer, batch nodes at a time, to one release
    for all: the one named, else the one before the newest live on them. Nodes already on it are left as they
    are; a node where the app is not live is refused."""
    app = App.objects.filter(name=app_name).first()
    if app is None:
        raise RolloutRefused(f"there is no app {app_name!r}")
    lb, nodes, size = _rollout_nodes(group, batch)
    live = {row.node_id: row.release for row in
            LiveRelease.objects.filter(app=app, node__in=nodes).select_related("release").order_by("activated_at")}
    missing = [n.name for n in nodes if n.pk not in live]
    if missing:
        raise RolloutRefused(f"{app_name} is not live on {', '.join(missing)}")
    newest = max(live.values(), key=lambda r: r.created_at)
    try:
        target = releases.rollback_target(app, newest, release)
    except FlowFailed as exc:
        raise RolloutRefused(str(exc)) from None
    plans = [{"kind": "rollback", "target": f"app:{app_name}@{n.name}",
              "params": {"app": app_name, "node": n.name, "release": target.name}}
             for n in nodes if live[n.pk] != target]
    return _rollout("rollback", app_name, group, lb, nodes, size, plans, release=target.name,
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
    """Queue one front_door job rendering these nodes from the records, and a balancer job for each of
    their groups that has a balancer (locations and certificates are the balancer's too)."""
    names = sorted(n.name for n in nodes)
    job = dispatch.submit("front_door", target=f"node:{names[0]}" if len(names) == 1 else "nodes",
                          params={"nodes": names}, actor_kind=actor_kind, actor=actor)
    balancer_after_edit(nodes, actor_kind=actor_kind, actor=actor)
    return job


def front_door_after_edit(app_ids, *, actor_kind, actor):
    """Locations of these apps were edited (admin, a group document): queue one front_door job for the
    nodes where any of them is live (and their groups' balancers: front_door); None when none is live
    (the app's first deploy renders them)."""
    nodes = list(Node.objects.filter(live__app_id__in=app_ids).distinct().order_by("name"))
    return front_door(nodes, actor_kind=actor_kind, actor=actor) if nodes else None


def front_door_after_roles(group_ids, *, actor_kind, actor):
    """Nodes' roles or groups changed (node set, the admin, a group document): the front doors of these groups'
    nodes where an app is live are rendered again, so they trust their group's lb node (and only it).
    None when no app is live on any of them."""
    nodes = list(Node.objects.filter(group_id__in=group_ids, live__isnull=False).distinct().order_by("name"))
    return front_door(nodes, actor_kind=actor_kind, actor=actor) if nodes else None


# Balancer

BALANCER_HEALTH_SCHEDULE = "toppcloud-balancer-health"  # beat's entry: the actor of the health jobs


def balancer(group, *, actor_kind, actor):
    """Render the group's balancer from the records (refused when the group has no lb node)."""
    lb = lb_steps.lb_node(group)
    if lb is None:
        raise InvalidNode(f"server group {group.name} has no node with the role lb")
    check_node(lb)
    if lb.set_up_at is None:
        raise InvalidNode(f"the lb node {lb.name} of {group.name} is not set up yet: `manage.py setup_node {lb.name}` "
                          f"installs HAProxy and renders the balancer")
    return dispatch.submit("balancer", target=f"group:{group.name}", params={"group": group.name},
                           actor_kind=actor_kind, actor=actor)


def balancer_after_edit(nodes, *, actor_kind, actor):
    """A balancer job for each group of these nodes that has a balancer (their locations or certificates
    changed); a group whose lb node record is not valid is logged and skipped."""
    jobs = []
    for group in lb_steps.groups_with_balancer(nodes):
        try:
            jobs.append(balancer(group, actor_kind=actor_kind, actor=actor))
        except InvalidNode as exc:
            log.warning("balancer of %s: %s", group.name, exc)
    return jobs


def balancer_health():
    """Beat's look at every balancer: a balancer_health job for each lb node whose servers' health changed
    since its events last said (none when nothing changed, nor while one for it is still queued or
    running). An lb node that cannot be asked is logged and skipped."""
    busy = set(Job.objects.filter(kind="balancer_health").exclude(status__in=TERMINAL)
               .values_list("target", flat=True))
    jobs = []
    for lb in Node.objects.filter(role=Node.Role.LB, set_up_at__isnull=False).order_by("name"):
        if f"node:{lb.name}" in busy:
            continue
        try:
            check_node(lb)
            changes = lb_steps.health_changes(node_transport(lb), lb, timezone.now())
        except (InvalidNode, NodeOpError) as exc:
            log.warning("balancer health of %s: %s", lb.name, exc)
            continue
        if changes:
            jobs.append(dispatch.submit("balancer_health", target=f"node:{lb.name}",
                                        params={"node": lb.name, "changes": changes},
                                        actor_kind=ActorKind.SCHEDULE, actor=BALANCER_HEALTH_SCHEDULE))
    return jobs


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
