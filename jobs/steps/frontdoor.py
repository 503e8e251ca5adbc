"""A node's nginx front door, rendered from the records: every app live on the node, at each of its locations.

One function changes it, update(): under the node's row lock (so two
deploys on one node never push each other's stale view), it reads what
is live there (LiveRelease, plus the release being activated), the apps'
Location records and maintenance flags, and the certificates of their
hosts; nodeops.frontdoor renders that and pushes it (nginx -t first). A
deploy's release.activated event is recorded under the same lock.
"""

from django.db import transaction

from jobs.engine.context import FlowFailed
from jobs.models import LiveRelease
from jobs.engine.states import Kind
from nodeops import frontdoor
from nodeops.layout import NodeLayout
from toppcloud_site.records.models import Certificate, Location, Node


def update(ctx, node, *, activating=None):
    """Make the node's front door what the records say; True if it changed.

    `activating` is (app, release, port, host, path): that release becomes
    the app's live one here, and release.activated is recorded once nginx
    serves it. FrontDoorError if nginx refused the render, or the activating
    release cannot be served at its own location (nothing changed). A route
    of another record that cannot be rendered is left out, with a
    front_door.skipped event naming it and why.
    """
    t, layout = ctx.transport(node), NodeLayout(node.root)
    failed = None
    with transaction.atomic():
        # One front door change per node at a time: the node's row stays locked until the push is done.
        list(Node.objects.select_for_update().filter(pk=node.pk).values_list("pk", flat=True))
        routes, refused = frontdoor.select(routes_for(node, activating))
        for route, why in refused:
            # Another record's fault: that block is left out, the rest of the node is served (and says so).
            ctx.emit("front_door.skipped", node=node.name, app=route.app, host=route.host, path=route.path,
                     reason=why)
            if activating and (route.app, route.host, route.path) == (activating[0].name, *activating[3:]):
                # The release being deployed cannot be served where its app.ini says: its deploy fails.
                failed = frontdoor.FrontDoorError(f"{route.app} cannot be served at {route.host}{route.path} on "
                                                  f"{node.name}: {why}; the live config is unchanged")
        if failed is None:
            failed, changed = _push(ctx, node, t, layout, routes, activating)
    if failed:
        raise failed
    return changed


def _push(ctx, node, t, layout, routes, activating):
    """Render and push the routes: (None, changed), or (the exception, None) with the events so far kept."""
    balancer = balancer_in_front(node)
    # Behind a balancer, TLS ends there (it sends plain HTTP here, which a certificate would redirect), and
    # its X-Forwarded-Proto is the one apps are given.
    certificates = certificates_for(routes) if balancer is None else []
    try:
        text = frontdoor.render(layout, routes, listen=listen_for(node, layout),
                                tls_listen=frontdoor.listen_address(node.address, node.https_port),
                                certificates=certificates, trusted_proxy=balancer and balancer.address)
    except ValueError as exc:
        return frontdoor.FrontDoorError(f"the front door of {node.name} cannot be rendered: {exc}; "
                                        "the live config is unchanged"), None
    try:
        changed = frontdoor.push(t, ctx.emit, layout, text, certificates)
    except Exception as exc:  # nginx refused it, the node is unreachable...: the events so far are
        return exc, None      # kept (the caller leaves the transaction normally), then fails
    ctx.emit("front_door", node=node.name, changed=changed, routes=frontdoor.describe(routes),
             https=sorted(c.host for c in certificates))
    if activating:
        app, release, port, host, path = activating
        ctx.emit(Kind.RELEASE_ACTIVATED, app=app.name, node=node.name, host=host, path=path,
                 release=release.name, port=port)
    return None, changed


def balancer_in_front(node):
    """The lb node of an app node's group, once it is set up (its setup renders the app nodes' front doors
    again), or None."""
    if node.role != Node.Role.APP or not node.group_id:
        return None
    return (Node.objects.filter(group_id=node.group_id, role=Node.Role.LB, set_up_at__isnull=False)
            .order_by("name").first())


def listen_for(node, layout):
    """Where the node's nginx listens: its address and port, or on a balancer node (whose port is HAProxy's)
    a unix socket (nodeops/setup.py public=False)."""
    if node.role == Node.Role.LB:
        return f"unix:{layout.nginx_sock}"
    return frontdoor.listen_address(node.address, node.http_port)


def routes_for(node, activating=None):
    """What the node serves: each app's newest live release there, at each of the app's locations."""
    live = {}
    for row in LiveRelease.objects.filter(node=node).select_related("app", "release").order_by("activated_at"):
        live[row.app_id] = (row.app, row.release, row.port, row.host, row.path)
    if activating:
        live[activating[0].pk] = activating
    places = {}
    for loc in Location.objects.filter(app_id__in=list(live)):
        places.setdefault(loc.app_id, set()).add((loc.host, loc.path))
    # Each app's own location (its app.ini's, where it went live) comes first, the Location records after:
    # of two routes that clash, frontdoor.select leaves out the later one, so a record never displaces an
    # app from where it is already served.
    own, extra = [], []
    for app_id, (app, release, port, host, path) in sorted(live.items(), key=lambda item: item[1][0].name):
        ini = release.app_ini
        for where_host, where_path in sorted(places.get(app_id, set()) | {(host, path)}):
            (own if (where_host, where_path) == (host, path) else extra).append(frontdoor.Route(
                app=app.name, host=where_host, path=where_path, port=port, release=release.name,
                static=ini.get("static") or None, writable=tuple(ini.get("writable_static_files") or ()),
                maintenance=app.maintenance))
    return own + extra


def certificates_for(routes):
    """The certificates of the routes' hosts: their own, or a wildcard one of the domain above."""
    hosts = {r.host for r in routes}
    wanted = hosts | {"*." + h.split(".", 1)[1] for h in hosts if "." in h and not h.startswith("*")}
    return [frontdoor.Certificate(host=c.host, chain_pem=c.certificate, key_pem=c.private_key)
            for c in Certificate.objects.filter(host__in=wanted).order_by("host")]


def nodes_serving(host):
    """The nodes where an app with a location a certificate for `host` would serve is live."""
    from toppcloud_site.records.tls import covers

    apps = {loc.app_id for loc in Location.objects.only("app_id", "host") if covers(host, loc.host)}
    return list(Node.objects.filter(live__app_id__in=apps).distinct().order_by("name"))


def activate(ctx, app, node, release, port, ini):
    """Point the app's locations on the node at the release (nginx -t, graceful reload); release.activated."""
    try:
        update(ctx, node, activating=(app, release, port, ini["location_host"], ini["location_path"]))
    except frontdoor.FrontDoorError as exc:
        raise FlowFailed(str(exc)) from None
