"""`manage.py run APP -- CMD`: one command in the app's live release on a node, as a job.

Take the node (the one asked for, or the first where the app is live); run
the command in the release's directory and environment, its output recorded
as it comes; stop it and its children at the timeout; its exit code is the
job's result.
"""

from jobs.engine.context import FlowFailed
from jobs.steps import execution, records
from nodeops.layout import NodeLayout


def run(ctx, app, argv, timeout, node=None):
    app = records.app(app)
    live = execution.pick_place(app, node)
    t, layout = ctx.transport(live.node), NodeLayout(live.node.root)
    ctx.emit("run.started", node=live.node.name, release=live.release.name, argv=argv, timeout=timeout)
    result = execution.run_in_release(ctx, t, layout, app.name, live.release.name, argv, timeout=timeout)
    ctx.emit("run.finished", rc=result.rc, timed_out=result.timed_out, signal=result.signal,
             leftovers=result.leftovers, seconds=result.seconds)
    where = f"{argv[0]} in {app.name} {live.release.name} on {live.node.name}"
    if result.rc != 0:
        raise FlowFailed(f"{where} {result.describe()}")
    return f"{where} exited 0 in {result.seconds:.1f} s", {"rc": 0, "node": live.node.name}
