"""A server group's load balancer, rendered from the records: every app location live on the group's app nodes.

One function changes it, update(): under the lb node's row lock (two jobs never push each other's stale
view), it reads what each app node of the group serves (the same routes its own front door renders:
jobs/steps/frontdoor.py routes_for + nodeops.frontdoor.select), joins them by app, host and path into
balancer locations whose servers are the nodes serving them, adds the certificates of their hosts and
the Location records' balancer_cache, and nodeops.balancer renders and pushes it (`haproxy -c` first).

After an activation (deploy, rollback) the flow runs update() as a step of its own ("balancer"), not a
queued job: the node's server must be in the balancer when the activating job ends, so a rolling deploy
that enables the node next finds it there. Edits of locations or certificates queue a `balancer` job
with their front_door job (jobs/actions.py front_door, groups_with_balancer here).
"""

from django.db import transaction

from jobs.engine.context import FlowFailed
from jobs.models import JobEvent, LiveRelease
from jobs.steps import frontdoor as node_frontdoor
from nodeops import balancer, frontdoor
from nodeops.errors import NodeOpError
from nodeops.layout import NodeLayout
from toppcloud_site.records.models import Location, Node


def lb_node(group):
    """The group's balancer node (role lb), or None."""
    if group is None:
        return None
    return Node.objects.filter(group=group, role=Node.Role.LB).order_by("name").first()


def app_nodes(group):
    return list(Node.objects.filter(group=group, role=Node.Role.APP).order_by("name"))


def backends_for(group):
    """(locations, refused): the balancer's locations from the records, and [(app, host, path, why)]
    for a location two apps claim on different nodes (the later one is left out)."""
    joined, refused = {}, []
    for node in app_nodes(group):
        routes, _ = frontdoor.select(node_frontdoor.routes_for(node))
        for r in routes:
            key = (r.host, r.path)
            entry = joined.setdefault(key, {"app": r.app, "servers": []})
            if entry["app"] != r.app:
                refused.append((r.app, r.host, r.path, f"{entry['app']} is served there on another node"))
                continue
            entry["servers"].append(balancer.Server(name=node.name, address=node.address, port=node.http_port))
    apps = {app for e in joined.values() for app in [e["app"]]}
    health, cached = {}, set()
    for row in (LiveRelease.objects.filter(app__name__in=apps, node__group=group)
                .select_related("app", "release").order_by("activated_at")):
        health[row.app.name] = row.release.app_ini.get("health_check")  # the newest live release's
    for loc in Location.objects.filter(app__name__in=apps, balancer_cache=True).select_related("app"):
        cached.add((loc.app.name, loc.host, loc.path))
    own = {}
    for row in LiveRelease.objects.filter(app__name__in=apps, node__group=group).select_related("app"):
        own[row.app.name] = (row.host, row.path)
    locations = [balancer.Location(app=e["app"], host=host, path=path, servers=tuple(e["servers"]),
                                   health_check=health.get(e["app"]), cache=(e["app"], host, path) in cached)
                 for (host, path), e in sorted(joined.items())]
    # Each app's own location (where it went live, app.ini's) first: its servers are health-checked there.
    locations.sort(key=lambda loc: own.get(loc.app) != (loc.host, loc.path))
    return locations, refused


def update(ctx, group):
    """Make the group's balancer what the records say; True if it changed, None if the group has none.

    BalancerError (nodeops) if HAProxy refused the render: the live config is unchanged.
    """
    lb = lb_node(group)
    if lb is None:
        return None
    t, layout = ctx.transport(lb), NodeLayout(lb.root)
    with transaction.atomic():
        # One balancer change at a time: the lb node's row stays locked until the push is done.
        list(Node.objects.select_for_update().filter(pk=lb.pk).values_list("pk", flat=True))
        locations, refused = backends_for(group)
        for app, host, path, why in refused:
            ctx.emit("balancer.skipped", node=lb.name, app=app, host=host, path=path, reason=why)
        certificates = [balancer.Certificate(host=c.host, chain_pem=c.chain_pem, key_pem=c.key_pem)
                        for c in node_frontdoor.certificates_for(locations)]
        paths = balancer.Paths(layout)
        try:
            text = balancer.render(paths, locations, listen=frontdoor.listen_address(lb.address, lb.http_port),
                                   tls_listen=frontdoor.listen_address(lb.address, lb.https_port),
                                   certificates=certificates, source=lb.address)
        except ValueError as exc:
            raise balancer.BalancerError(f"the balancer of {group.name} cannot be rendered: {exc}; "
                                         "the live config is unchanged") from None
        changed = balancer.push(t, ctx.emit, layout, text, certificates)
    ctx.emit("balancer", node=lb.name, group=group.name, changed=changed, locations=balancer.describe(locations),
             https=sorted(c.host for c in certificates))
    return changed


def update_after_activation(ctx, node):
    """The step of a deploy or rollback once the release is live on `node`: the group's balancer as the
    records now say (no step when the node's group has no balancer)."""
    group = node.group
    lb = lb_node(group) if node.role == Node.Role.APP else None
    if lb is None:
        return None
    if lb.set_up_at is None:  # its setup renders it from the records, this deploy included
        ctx.emit("balancer.skipped", node=lb.name, reason=f"{lb.name} is not set up yet")
        return None
    with ctx.step("balancer") as s:
        try:
            s.changed = update(ctx, group)
        except NodeOpError as exc:  # HAProxy refused the render, or the lb node cannot be reached
            raise FlowFailed(f"the release is live on {node.name}, but the balancer of {group.name} kept its "
                             f"config: {exc}") from None
    return s.changed


def groups_with_balancer(nodes):
    """The groups of these nodes that have a balancer that is set up, by name (jobs/actions.py queues a
    balancer job for each after a front door edit; an lb node's own setup renders it the first time)."""
    groups = {n.group for n in nodes if n.group_id}
    return sorted((g for g in groups if getattr(lb_node(g), "set_up_at", None)), key=lambda g: g.name)


# Health changes

HEALTH_KINDS = ("balancer.server_down", "balancer.server_up")


def health(state):
    """UP or DOWN as the health checks say (a drained server is up), None when checks do not decide
    (maintenance)."""
    if state in ("UP", "DRAIN", "NOLB"):
        return "UP"
    if state == "DOWN":
        return "DOWN"
    return None


def last_recorded(lb):
    """{(backend, server): UP|DOWN} as the balancer_health events of the lb node last recorded them."""
    seen = {}
    for data in (JobEvent.objects.filter(kind__in=HEALTH_KINDS, job__kind="balancer_health",
                                         job__target=f"node:{lb.name}")
                 .order_by("job_id", "seq").values_list("data", flat=True)):
        seen[data["backend"], data["server"]] = data["state"]
    return seen


def health_changes(t, lb, now):
    """What changed at the lb node's balancer since the events last said: [{backend, server, state, was,
    at, seconds_since_change}]. A server never recorded counts as having been UP."""
    before = last_recorded(lb)
    changes = []
    for row in balancer.server_states(t, NodeLayout(lb.root)):
        state = health(row["state"])
        was = before.get((row["backend"], row["server"]), "UP")
        if state is None or state == was:
            continue
        at = now.timestamp() - row["last_change_s"]
        changes.append({"backend": row["backend"], "server": row["server"], "state": state, "was": was,
                        "at": round(at, 1), "seconds_since_change": row["last_change_s"]})
    return changes
