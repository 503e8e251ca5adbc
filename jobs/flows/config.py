"""Config apply and group secret rotation: running releases get the config as it is now, no restart.

Apply, for each app: take its lock; refuse if its live release's
config.required is not set; then on each node where it is live: make sure
of its data services (their variables are part of the environment); write
the new environment beside the old one; check that the app loads with it;
put it in place; reload gunicorn gracefully (HUP: new workers start with
the new environment, the old ones finish their requests); ask its health
URL; record config.applied with the config version it now runs with.

Rotate the group secret: a new TOPPCLOUD_GROUP_SECRET for the group (the
old one stays available as TOPPCLOUD_GROUP_SECRET_PREVIOUS), then apply to
every app of the group.

A node where applying fails keeps the environment it had: the old env file
and workers if the app does not load with the new one, the old env file
put back and reloaded again if the health URL fails after the reload. The
job fails naming it, after trying the others.
"""

from jobs.engine.context import FlowFailed
from jobs.steps import data, environment, execution, locks, records, releases
from nodeops import release as node_release
from nodeops.layout import NodeLayout
from toppcloud_site.records import audit
from toppcloud_site.records.models import App


def apply_config(ctx, apps):
    """Give the apps' running releases the config as it is now.

    For each app: lock.taken (its lock); on each node where it is live:
    1. apply APP on NODE: its data services, the new environment beside the old one, checked, put in
       place, gunicorn reloaded (HUP); config.applied
    2. health APP on NODE: ask its health URL (a failure: the old environment put back)
    """
    return apply_to_apps(ctx, [records.app(name) for name in apps])


def rotate_group_secret(ctx, group):
    """A new shared secret for a server group, then the config applied to every app of it.

    1. rotate: a new TOPPCLOUD_GROUP_SECRET (the old one stays as TOPPCLOUD_GROUP_SECRET_PREVIOUS)
    2. apply APP on NODE, health APP on NODE: as apply_config, for each app of the group
    """
    group = records.group(group)
    with ctx.step("rotate"), audit.acting_as(f"{ctx.job.actor_kind}:{ctx.job.actor}"):
        environment.rotate_group_secret(group)  # an audit entry, the values masked
    summary, result = apply_to_apps(ctx, list(App.objects.filter(group=group).order_by("name")))
    return f"{group.name} has a new shared secret; {summary}", result


def apply_to_apps(ctx, apps):
    applied, failed = {}, []
    for app in apps:
        locks.take_app(ctx, app)  # no deploy or rollback of it meanwhile
        for live in execution.live_places(app):
            try:
                applied.setdefault(app.name, []).append(apply_on_node(ctx, app, live))
            except (FlowFailed, node_release.ReleaseError, ValueError) as exc:
                failed.append(f"{app.name} on {live.node.name}: {exc}")
                ctx.emit("config.apply_failed", app=app.name, node=live.node.name, error=str(exc))
    done = sorted(f"{name} on {', '.join(nodes)}" for name, nodes in applied.items())
    if failed:
        kept = "; they keep the config they had" + (f"; applied: {', '.join(done)}" if done else "")
        raise FlowFailed("config not applied to " + "; ".join(failed) + kept)
    if not done:
        return "no app was live: each gets the config at its next deploy", {"applied": {}}
    return f"config applied to {', '.join(done)}", {"applied": applied}


def apply_on_node(ctx, app, live):
    node, release = live.node, live.release
    ini = release.app_ini
    t, layout = ctx.transport(node), NodeLayout(node.root)
    environment.require_config(app, release)
    with ctx.step(f"apply {app.name} on {node.name}") as s:
        service_env, _ = data.ensure_services(ctx, app, node, ini.get("services", []))
        venv, _ = node_release.ensure_venv(t, ctx.emit, layout, app.name,
                                           node_release.release_dir(layout, app.name, release.name),
                                           ini["requirements"], python=releases.find_python(ctx, t, layout, ini, node))
        used = environment.config_used(app, release)
        env = environment.release_environment(app, release, node, layout, venv, service_env)
        result = node_release.apply_env(t, ctx.emit, layout, app.name, release.name, env, runner=ini["runner"])
        s.data.update(used, **result)
    if not result["reloaded"]:
        ctx.emit("log", text=f"{app.name} {release.name} is not running on {node.name} ({result['state']}); "
                             "it starts with the new environment")
    with ctx.step(f"health {app.name} on {node.name}") as s:
        status, body = node_release.http_get(t, live.port, ini["health_check"] or "/", host=live.host)
        s.data["status"] = status
        if ini["health_check"] and not 200 <= status < 300:
            node_release.revert_env(t, ctx.emit, layout, app.name, release.name, runner=ini["runner"])
            raise FlowFailed(f"health check {ini['health_check']} answered {status} after the reload: "
                             f"{body[:200]!r}; the environment it had was put back")
    ctx.emit("config.applied", app=app.name, node=node.name, release=release.name, **used)
    return node.name
