"""Node flows: set a host up, check it answers, reconcile it with the records."""

from django.utils import timezone

from jobs.engine.context import FlowFailed
from jobs.steps import balancer, frontdoor, reconcile, records, replication
from nodeops import balancer as node_balancer, ping, setup
from nodeops.layout import NodeLayout
from toppcloud_site.records.models import Node


def setup_node(ctx, node):
    """Set a host up as a node, then reconcile it with the records.

    1-8. facts, packages, layout, config, validate, start, app users, verify: nodeops/setup.py's own
       steps (setup.STEPS), on the host
    (a node with the role lb) haproxy package, haproxy config, haproxy start, haproxy verify: HAProxy
       under the node's supervisord on its port (nodeops/balancer.py; its own nginx keeps to a unix
       socket), balancer of GROUP: rendered from the records, then front door of NODE for each app
       node of its group that is set up (they trust its X-Forwarded-For/-Proto and leave TLS to it)
    9. reconcile: stop what interrupted jobs left running, the front door as the records say
    """
    node = records.node(node)
    lb = node.role == Node.Role.LB
    t = ctx.transport(node)
    facts = setup.setup_node(t, root=node.root, address=node.address, http_port=node.http_port, emit=ctx.emit,
                             public=not lb)
    if lb:
        ctx.emit("plan", steps=[*setup.STEPS, *node_balancer.STEPS, f"balancer of {_group_name(node)}",
                                "reconcile"])
        facts["balancer"] = node_balancer.setup_balancer(t, ctx.emit, NodeLayout(node.root), address=node.address,
                                                         http_port=node.http_port, https_port=node.https_port)
    # The host's facts, and what a replica add recorded about the node's PostgreSQL (it is no host fact).
    kept = {key: node.facts[key] for key in replication.REPLICATION_FACTS if key in (node.facts or {})}
    Node.objects.filter(pk=node.pk).update(facts={**facts, **kept}, set_up_at=timezone.now())
    if lb and node.group_id:
        # The balancer first (it takes over TLS), then the app nodes behind it: they trust its
        # X-Forwarded-For/-Proto and leave TLS to it. One not set up yet gets its front door from its own setup.
        with ctx.step(f"balancer of {node.group.name}") as s:
            try:
                s.changed = balancer.update(ctx, node.group)
            except node_balancer.BalancerError as exc:
                raise FlowFailed(str(exc)) from None
        for app_node in [n for n in balancer.app_nodes(node.group) if n.set_up_at]:
            with ctx.step(f"front door of {app_node.name}") as s:
                s.changed = frontdoor.update(ctx, app_node)
    if not lb:
        ctx.emit("plan", steps=[*setup.STEPS, "reconcile"])  # one step more than the node's own setup announced
    with ctx.step("reconcile") as s:
        done = reconcile.reconcile(ctx, node)
        s.data["stopped"] = [p["program"] for p in done["stopped"]]
    changed = "changed" if facts.get("changed") else "already as wanted"
    if lb:
        return (f"node {node.name} set up as the balancer of {_group_name(node)} ({changed}); HAProxy answers on "
                f"{node.address}:{node.http_port}"), facts
    return f"node {node.name} set up ({changed}); nginx answers on {node.address}:{node.http_port}", facts


def _group_name(node):
    return node.group.name if node.group_id else "no group"


def reconcile_node(ctx, node):
    """Every few minutes (beat: toppcloud-reconcile-nodes): stop what interrupted jobs left running on the
    node, and make its front door what the records say (jobs/steps/reconcile.py).

    1. reconcile
    2. balancer of GROUP (a set-up lb node only): its HAProxy as the records say
    """
    node = records.node(node)
    with ctx.step("reconcile") as s:
        done = reconcile.reconcile(ctx, node)
        s.data["stopped"] = [p["program"] for p in done["stopped"]]
    if node.role == Node.Role.LB and node.group_id and node.set_up_at is not None:
        with ctx.step(f"balancer of {node.group.name}") as s:
            try:
                s.changed = balancer.update(ctx, node.group)
            except node_balancer.BalancerError as exc:
                raise FlowFailed(str(exc)) from None
    said = ", ".join(f"{p['app']} {p['release']}" for p in done["stopped"]) or "nothing"
    door = "; front door re-rendered from the records" if done["front_door_changed"] else ""
    return f"node {node.name} reconciled: stopped {said}{door}", done


def ping_node(ctx, node):
    """Check a node answers: its round trip, load, memory and the disk of its root (no steps; the admin's
    dashboard shows the result)."""
    node = records.node(node)
    result = ping.ping(ctx.transport(node), emit=ctx.emit, root=node.root)
    disk = (f", {result['disk_free_bytes'] / 2**30:.1f} GiB free at {node.root}" if "disk_free_bytes" in result
            else f", no disk figure ({node.root} is missing)")
    return f"node {node.name} answered in {result['round_trip_seconds'] * 1000:.0f} ms, load {result['load1']}{disk}", result
