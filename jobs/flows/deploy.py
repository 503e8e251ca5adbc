"""Deploy and rollback on one node, as a person would do them by hand (each step: jobs/steps/).

A failure before activation stops the new release; the old one never stops
serving. A failure of the database updates, or of the health check that follows
them, also restores the checkpoint (docs/running.md: A deploy, step by step).
"""

from jobs.engine import fan_out
from jobs.engine.context import FlowFailed, WaitForChildren
from jobs.models import LiveRelease
from jobs.steps import (balancer, checkpoints, cron, data, environment, frontdoor, locks, reconcile, records, releases,
                        rolling)
from nodeops import release as node_release
from nodeops.layout import NodeLayout


def deploy(ctx, app, release, node, lb=None):
    """Deploy a release of an app on one node (lb: the balancer node in front of it, in a rolling deploy).

    1. lock.taken: the app's lock; refuse a release whose config.required is not set
    2. reconcile: stop what an interrupted deploy left running, the front door as the records say
    (lb given: out of rotation: drained at the balancer, its in-flight requests finished; jobs/steps/rolling.py)
    3. python: the interpreter app.ini's `python` asks for, found on the node or installed with uv
       (no `python`: the node's python3, no step); none: refused, nothing was changed on the node
    4. services: install its data services, make its writable static directories
    5. app user: the app's own system user, its directories its own
    6. upload: the release next to the previous one (rsync --link-dest)
    7. venv: build or reuse its virtualenv
    8. env: its environment, from the config as it is now
    9. build: app.ini's build commands, its static directory theirs to write (no build: no step)
    10. static publish: its static files as built, to the group's CDN origin, if it has one
    11. start: on a fresh port beside the live one
    12. wait until it answers: the process answers its health URL at all (any status)
    13. checkpoint: back its data up, if it has data services
    14. update_fetch: its database updates
    15. health: ask its health URL (not live yet), against the updated schema
    16. activate: the node's front door with it live (nginx -t, reload), release.activated
    17. cron: its [cron] entries become the app's schedules
    18. stop old release
    19. prune: old releases
    20. balancer: the group's balancer as the records now say (a group with an lb node only; last, so a
        balancer that refuses the config or cannot be reached fails the job after the node's own work)
    (lb given: direct health check: the node's front door asked from the balancer, 2xx; back in rotation)
    A failure of update_fetch or health: revert (the checkpoint put back). A failure from wait to activate:
    stop new release. A failure once drained: back in rotation if what is live answers the direct health
    check, else left drained (after failure).
    """
    app, node = records.app(app), records.node(node)
    release = records.release(app, release)
    ini = release.app_ini
    t, layout = ctx.transport(node), NodeLayout(node.root)
    locks.take_app(ctx, app)  # before reading what is live: nobody else changes it while we hold it
    environment.require_config(app, release, note=f"nothing was changed on {node.name}")
    with ctx.step("reconcile") as s:
        reconcile.reconcile_app(ctx, app, node, s)
    live = LiveRelease.objects.filter(app=app, node=node, host=ini["location_host"], path=ini["location_path"]).first()
    previous = live.release if live else None
    if previous == release:
        rolling.back_if_drained(ctx, app, node, lb)  # a rollout that died after activating it left it drained
        return f"{app.name} {release.name} is already live on {node.name}; nothing to do", {"release": release.name}

    with rolling.out_of_rotation(ctx, app, node, lb):
        python = None
        if ini.get("python"):
            with ctx.step("python") as s:
                python = releases.find_python(ctx, t, layout, ini, node)
                s.data.update(python)
        with ctx.step("services") as s:
            service_env, s.changed = data.ensure_services(ctx, app, node, ini.get("services", []),
                                                          ini.get("writable_static_files", []))
        with ctx.step("app user") as s:
            user = releases.ensure_app_user(ctx, t, layout, app, s)
        with releases.unpacked(ctx, release) as src:
            with ctx.step("upload") as s:
                link_dest = releases.node_release_dir(layout, app, previous) if previous else None
                release_dir = node_release.upload(t, ctx.emit, layout, app.name, release.name, src, previous=link_dest)
                s.data["release_dir"] = release_dir
        with ctx.step("venv") as s:
            venv, s.changed = node_release.ensure_venv(t, ctx.emit, layout, app.name, release_dir, ini["requirements"],
                                                       python=python)
        with ctx.step("env") as s:
            s.data.update(environment.config_used(app, release))
            env_file = environment.write_env_file(t, layout, app, release, node, venv, service_env, user)
        if ini.get("build"):
            with ctx.step("build") as s:
                s.data["static"] = releases.run_build(ctx, t, layout, app, release, ini, user, previous)
        if releases.publishes_static(app, ini):
            with ctx.step("static publish") as s:
                s.data["published_to"] = releases.publish_static(ctx, t, layout, app, release, ini)
        with ctx.step("start") as s:
            port = s.data["port"] = releases.start(ctx, t, layout, app, release, ini, venv, env_file, user)
        with ctx.step("wait until it answers") as s:
            answer = s.data["answer"] = releases.wait_until_answers(t, layout, app, port, ini)
        with releases.stopped_if_not_live(ctx, t, layout, app, release, step="stop new release"):
            checkpoint = None
            if checkpoints.wanted(ini):
                with ctx.step("checkpoint") as s:
                    checkpoint = checkpoints.take(ctx, app, node, ini)
                    s.data.update(backup=checkpoint.name, size=checkpoint.size)
            with checkpoints.reverted_on_failure(ctx, app, node, checkpoint, step="revert"):
                with ctx.step("update_fetch"):
                    releases.run_update_fetch(ctx, t, layout, app, release, port, ini)
                with ctx.step("health"):
                    if ini["update_fetch"]:  # asked again: what goes live is checked against the updated schema
                        answer = releases.ask_health(t, port, ini)
                    releases.check_health(ctx, answer, ini, release, previous)
            with ctx.step("activate"):
                frontdoor.activate(ctx, app, node, release, port, ini)
        with ctx.step("cron") as s:
            s.data.update(cron.sync_entries(app, release))
        if previous and previous != release:
            with ctx.step("stop old release"):
                node_release.stop(t, ctx.emit, layout, app.name, previous.name)
        with ctx.step("prune") as s:
            s.data["removed"] = node_release.prune(t, ctx.emit, layout, app.name,
                                                   releases.keep_releases(app, release, ini))
        balancer.update_after_activation(ctx, node)  # last: a balancer that fails leaves the node's work done
    was = f" (was {previous.name})" if previous else ""
    return (f"{app.name} {release.name} live on {node.name} at {ini['location_host']}{ini['location_path']}{was}",
            {"release": release.name, "previous": previous.name if previous else None, "port": port})


def rollback(ctx, app, node, release=None, lb=None):
    """Make a previous release, still on the node's disk, live again: no upload, no venv build, no database
    updates; it too gets the config as it is now. lb: as for deploy.

    1. lock.taken: the app's lock; refuse a release whose config.required is not set
    2. reconcile
    (lb given: out of rotation)
    3. python: the interpreter its app.ini asks for (none asked: no step)
    4. services
    5. app user
    6. venv: reuse its virtualenv (built again if it is gone)
    7. env: its environment, from the config as it is now (a secret rotated since stays rotated)
    8. start
    9. wait until it answers
    10. health
    11. activate
    12. cron
    13. stop old release
    14. balancer (a group with an lb node only)
    (lb given: direct health check; back in rotation)
    A failure from health to activate: stop new release. Once drained: as for deploy.
    """
    app, node = records.app(app), records.node(node)
    locks.take_app(ctx, app)
    live = LiveRelease.objects.filter(app=app, node=node).select_related("release").first()
    if live is None:
        raise FlowFailed(f"{app.name} has no live release on {node.name} to roll back from")
    target = releases.rollback_target(app, live.release, release)
    ini = target.app_ini
    t, layout = ctx.transport(node), NodeLayout(node.root)
    environment.require_config(app, target, note=f"nothing was changed on {node.name}")
    with ctx.step("reconcile") as s:
        reconcile.reconcile_app(ctx, app, node, s)
    with rolling.out_of_rotation(ctx, app, node, lb):
        python = None
        if ini.get("python"):
            with ctx.step("python") as s:
                python = releases.find_python(ctx, t, layout, ini, node)
                s.data.update(python)
        with ctx.step("services") as s:
            service_env, s.changed = data.ensure_services(ctx, app, node, ini.get("services", []),
                                                          ini.get("writable_static_files", []))
        with ctx.step("app user") as s:
            user = releases.ensure_app_user(ctx, t, layout, app, s)
        with ctx.step("venv") as s:
            venv, s.changed = node_release.ensure_venv(t, ctx.emit, layout, app.name,
                                                       releases.node_release_dir(layout, app, target),
                                                       ini["requirements"], python=python)
        with ctx.step("env") as s:
            s.data.update(environment.config_used(app, target))
            env_file = environment.write_env_file(t, layout, app, target, node, venv, service_env, user)
        with ctx.step("start") as s:
            port = s.data["port"] = releases.start(ctx, t, layout, app, target, ini, venv, env_file, user)
        with ctx.step("wait until it answers") as s:
            answer = s.data["answer"] = releases.wait_until_answers(t, layout, app, port, ini)
        with releases.stopped_if_not_live(ctx, t, layout, app, target, step="stop new release"):
            with ctx.step("health"):
                releases.check_health(ctx, answer, ini, target, live.release)
            with ctx.step("activate"):
                frontdoor.activate(ctx, app, node, target, port, ini)
        with ctx.step("cron") as s:
            s.data.update(cron.sync_entries(app, target))
        with ctx.step("stop old release"):
            node_release.stop(t, ctx.emit, layout, app.name, live.release.name)
        balancer.update_after_activation(ctx, node)
    return (f"{app.name} rolled back to {target.name} on {node.name} (was {live.release.name})",
            {"release": target.name, "previous": live.release.name, "port": port})


def deploy_many(ctx, app, release, children, max_parallel):
    """One child deploy job per node, max_parallel at a time, all under this job's lock of the app.

    1. lock.taken: the app's lock; each child deploy works under it
    2. start the children, max_parallel at a time (the last to end ends this job)
    """
    locks.take_app(ctx, records.app(app))
    fan_out.start_children(ctx.job, children, max_parallel)
    return WaitForChildren(f"deploying {app} {release} to {len(children)} nodes, {max_parallel} at a time")


def rollout(ctx, app, action, children, batches, lb=None, release=None):
    """Deploy (or roll back) the app on a group's app nodes through its balancer, a batch at a time.

    1. lock.taken: the app's lock; each child works under it
    2. batch.started: the first batch's children (each drains its node, changes it, checks it directly,
       puts it back); each next batch starts when every child of the one before succeeded, and the first
       failure stops the rollout: the children not started never are (rollout.stopped names them)
    """
    locks.take_app(ctx, records.app(app))
    ctx.emit("batch.started", batch=1, of=len(batches), targets=[c["target"] for c in children[:batches[0]]])
    fan_out.start_batches(ctx.job, children, batches)
    what = f"{action} of {app} {release}" if release else f"{action} of {app}"
    through = f" through {lb}" if lb else ""
    return WaitForChildren(f"{what} on {len(children)} nodes{through}, in {len(batches)} batches of at most "
                           f"{max(batches)}")
