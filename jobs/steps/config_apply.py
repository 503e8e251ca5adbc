"""Config apply: running releases of apps get their environment as the records give it now, no redeploy.

For each app: take its lock; then on each node where it is live: make sure of
its data services (their variables are part of the environment); write the
new environment beside the old one; check that the app loads with it; put it
in place; reload gunicorn gracefully (HUP); ask its health URL; record
config.applied. A node where applying fails keeps the environment it had.

Flows that repoint apps (config apply, group secret rotation, replica add,
promote) call apply_to_apps.
"""

from jobs.engine.context import FlowFailed
from jobs.steps import data, environment, execution, locks, releases
from nodeops import release as node_release
from nodeops.errors import NodeOpError
from nodeops.layout import NodeLayout


def apply_to_apps(ctx, apps):
    """Apply to every node where each app is live; (summary, {"applied": {app: [nodes]}}).

    Raises FlowFailed naming every app/node it could not apply to, after trying the others.
    """
    applied, failed = {}, []
    for app in apps:
        locks.take_app(ctx, app)  # no deploy or rollback of it meanwhile
        for live in execution.live_places(app):
            try:
                applied.setdefault(app.name, []).append(apply_on_node(ctx, app, live))
            except (FlowFailed, NodeOpError, ValueError) as exc:  # a node that does not answer too: the others go on
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
    """Steps `apply APP on NODE` and `health APP on NODE`; the node's name once config.applied."""
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
