"""Rolling through a group's balancer: batches of app nodes, and one node out of rotation while it changes.

A rolling deploy (or rollback) is a parent job whose children are the
deploys of the group's app nodes, a batch at a time (jobs/engine/fan_out.py:
batch N+1 starts once every child of batch N succeeded). Each child takes
its node out of rotation at the balancer for the time it changes it:

1. out of rotation: drain the node's server in the app's backend, wait until
   its in-flight requests are done (a node not in the backend yet, its first
   deploy, is not drained, nor one whose backend has no other server UP and
   ready; requests still in flight after 30 s: the node goes back in rotation
   unchanged and the job fails)
2. the deploy's own steps
3. direct health check: from the balancer, GET the node's front door at the
   app's location and health URL (with the location's Host); 2xx or it fails
4. back in rotation: enable the server, wait until HAProxy sees it UP

A failure after the drain: what is live on the node is asked directly; if it
answers 2xx (the new release was never activated, the old one still serves)
the node goes back in rotation, else it is left drained. The event says which.
"""

import math
import re
import time
from contextlib import contextmanager

from jobs.engine.context import FlowFailed
from jobs.models import LiveRelease
from jobs.steps import records
from nodeops import balancer
from nodeops import release as node_release
from nodeops.layout import NodeLayout

UP_TIMEOUT = 30  # seconds for HAProxy to see an enabled server UP (its checks: inter 1s rise 2)
IDLE_TIMEOUT = 30  # seconds for a drained server's in-flight requests to finish


class BatchRefused(ValueError):
    """--batch names no batch size that can roll this group."""


def parse_batch(text, n):
    """How many of n app nodes a batch holds: "1", "2", ... or "25%" (of n, rounded down, at least 1).

    A batch must leave the balancer a node to send requests to: with more than
    one node, a batch of all of them is refused.
    """
    text = str(text).strip()
    match = re.fullmatch(r"(-?\d+)(%?)", text)
    if not match:
        raise BatchRefused(f"--batch {text!r} is not a number of nodes (1, 2, ...) or a percentage of them (25%)")
    value, percent = int(match[1]), bool(match[2])
    if percent:
        if not 1 <= value <= 100:
            raise BatchRefused(f"--batch {text}: a percentage must be from 1% to 100%")
        size = max(1, math.floor(n * value / 100))
    else:
        if value < 1:
            raise BatchRefused(f"--batch {text}: a batch must hold at least 1 node")
        size = value
    if n > 1 and size >= n:
        raise BatchRefused(f"--batch {text} would take all {n} app nodes out of rotation at once, leaving the "
                           f"balancer none to send requests to; at most --batch {n - 1} (or a percentage under "
                           f"100%)")
    return min(size, n)


def batch_sizes(n, size):
    """n nodes in consecutive batches of `size` (the last one may be smaller): [1, 1, 1], [2, 1]."""
    return [min(size, n - start) for start in range(0, n, size)]


def direct_check(ctx, lb, app, node):
    """From the balancer node, GET what is live on `node` at the app's location + health URL, past the
    balancer: (ok, what it says). Nothing live there: (False, why)."""
    return ask_directly(ctx.transport(lb), ctx.emit, app, node)


def ask_directly(t, emit, app, node):
    """direct_check over `t`, the lb node's transport (manage.py balancer --enable asks it outside a job)."""
    live = LiveRelease.objects.filter(app=app, node=node).select_related("release").order_by("-activated_at").first()
    if live is None:
        return False, f"{app.name} has no live release on {node.name}"
    ini = live.release.app_ini
    host = live.host.replace("*", "health-check", 1) if live.host.startswith("*") else live.host
    path = live.path.rstrip("/") + (ini.get("health_check") or "/")
    try:
        status, body = node_release.http_get_at(t, node.address, node.http_port, path, host=host)
    except node_release.ReleaseError as exc:
        emit("health.direct", node=node.name, release=live.release.name, host=host, path=path, error=str(exc))
        return False, str(exc)
    emit("health.direct", node=node.name, release=live.release.name, host=host, path=path, status=status,
         body=body[:200])
    said = f"{live.release.name} answered {status} to GET http://{node.address}:{node.http_port}{path} (Host: {host})"
    return 200 <= status < 300, said


def _server(t, layout, backend, server):
    for row in balancer.server_states(t, layout):
        if row["backend"] == backend and row["server"] == server:
            return row
    return None


def _enable(ctx, lb, t, layout, backend, node, reason):
    """Put the server back in rotation and wait until HAProxy sees it UP; the seconds that took."""
    balancer.set_server_state(t, ctx.emit, layout, backend, node.name, "ready")
    ctx.emit("balancer.enable", balancer=lb.name, backend=backend, server=node.name, reason=reason)
    started = time.monotonic()
    while True:
        row = _server(t, layout, backend, node.name)
        if row is not None and row["state"] == "UP":
            return round(time.monotonic() - started, 3)
        if time.monotonic() - started > UP_TIMEOUT:
            raise FlowFailed(f"{node.name} was enabled in {backend} on {lb.name} but is not UP after {UP_TIMEOUT}s "
                             f"(state {row['state'] if row else 'gone from the backend'})")
        time.sleep(0.25)


@contextmanager
def out_of_rotation(ctx, app, node, lb_name):
    """The node out of the balancer's rotation for the body (see the module's docstring); lb_name None:
    no balancer, the body alone."""
    if lb_name is None:
        yield
        return
    lb = records.node(lb_name)
    t, layout, backend = ctx.transport(lb), NodeLayout(lb.root), balancer.backend_name(app.name)
    with ctx.step("out of rotation") as s:
        rows = [r for r in balancer.server_states(t, layout) if r["backend"] == backend]
        serving = [r["server"] for r in rows if r["server"] != node.name and r["state"] == "UP"
                   and r["admin"] == "ready"]
        drained = any(r["server"] == node.name for r in rows) and bool(serving)
        if drained:
            balancer.set_server_state(t, ctx.emit, layout, backend, node.name, "drain")
            ctx.emit("balancer.drain", balancer=lb.name, backend=backend, server=node.name)
            try:
                s.data["idle_after_s"] = balancer.wait_idle(t, ctx.emit, layout, backend, node.name,
                                                            timeout=IDLE_TIMEOUT)
            except balancer.BalancerError as exc:  # requests still in flight: leave the node as it was
                balancer.set_server_state(t, ctx.emit, layout, backend, node.name, "ready")
                ctx.emit("balancer.enable", balancer=lb.name, backend=backend, server=node.name,
                         reason=f"{exc}: nothing was changed on {node.name}; back in rotation")
                raise FlowFailed(f"{exc}; nothing was changed on {node.name}, it is back in rotation") from None
        elif any(r["server"] == node.name for r in rows):  # draining it would leave the backend no server
            s.data["skipped"] = why = (f"no other server of {backend} on {lb.name} is UP and ready: {node.name} "
                                       f"stays in rotation (its own deploy keeps it serving)")
            ctx.emit("balancer.not_drained", balancer=lb.name, backend=backend, server=node.name, reason=why)
        else:
            s.data["skipped"] = f"{node.name} is not in {backend} on {lb.name} yet (the app's first deploy there)"
    try:
        yield
    except BaseException as exc:
        if drained:
            _after_failure(ctx, lb, t, layout, backend, app, node, exc)
        raise
    with ctx.step("direct health check") as s:
        ok, said = direct_check(ctx, lb, app, node)
        s.data["answer"] = said
        if not ok:
            where = f"it is not in {backend} on {lb.name}"
            if _server(t, layout, backend, node.name) is not None:  # (a first deploy's may be added by now)
                balancer.set_server_state(t, ctx.emit, layout, backend, node.name, "drain")
                ctx.emit("balancer.left_drained", balancer=lb.name, backend=backend, server=node.name,
                         reason=f"the direct health check failed: {said}")
                where = f"it is left drained in {backend} on {lb.name}"
            raise FlowFailed(f"direct health check of {node.name} failed: {said}; {where}")
    with ctx.step("back in rotation") as s:
        if _server(t, layout, backend, node.name) is None:
            s.data["skipped"] = f"{node.name} is not in {backend} on {lb.name} yet: the balancer's update adds it"
        else:
            s.data["up_after_s"] = _enable(ctx, lb, t, layout, backend, node, f"{said}; back in rotation")


def back_if_drained(ctx, app, node, lb_name):
    """A node whose change is already done but which was left drained (its job died after activation):
    back in rotation if what is live there answers its health check directly, else FlowFailed."""
    if lb_name is None:
        return
    lb = records.node(lb_name)
    t, layout, backend = ctx.transport(lb), NodeLayout(lb.root), balancer.backend_name(app.name)
    row = _server(t, layout, backend, node.name)
    if row is None or row["admin"] == "ready":
        return
    with ctx.step("back in rotation") as s:
        ok, said = direct_check(ctx, lb, app, node)
        s.data["answer"] = said
        if not ok:
            raise FlowFailed(f"{node.name} is {row['admin']} in {backend} on {lb.name} and its direct health check "
                             f"failed: {said}; it is left so")
        s.data["up_after_s"] = _enable(ctx, lb, t, layout, backend, node, f"{said}; back in rotation")


def _after_failure(ctx, lb, t, layout, backend, app, node, exc):
    """A drained node's change failed: back in rotation if what is live there answers its health check
    directly, else left drained. Never hides the failure itself."""
    try:
        with ctx.step("after failure") as s:
            ok, said = direct_check(ctx, lb, app, node)
            s.data["answer"] = said
            if ok:
                s.data["up_after_s"] = _enable(ctx, lb, t, layout, backend, node,
                                               f"the change failed ({str(exc)[:200]}) but {said}: back in rotation")
            else:
                ctx.emit("balancer.left_drained", balancer=lb.name, backend=backend, server=node.name,
                         reason=f"the change failed and {said}")
    except Exception as again:  # the failure that brought us here is the job's error, not this one
        ctx.emit("log", text=f"{node.name} left as it is in {backend} on {lb.name}: {again}")
