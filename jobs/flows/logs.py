"""`manage.py logs APP`: the last lines of an app's logs, fetched from each node where it is live.

For each node (or the one asked for): for each log asked for (error.log,
access.log, app.log, cron.log under logs/<app>/): read its last lines and
record them as output. Every output event is redacted like all events: the
app's secrets (its config secrets, database password, task token) show as
********, whatever the app wrote into its logs.
"""

from jobs.steps import environment, execution, records
from nodeops.layout import NodeLayout

LOG_FILES = ("error", "access", "app", "cron")  # logs/<app>/<name>.log on a node


def logs(ctx, app, lines, files, node=None):
    app = records.app(app)
    environment.mask_app_secrets(app)  # before anything of the logs reaches an event
    places = [execution.pick_place(app, node)] if node else execution.live_places(app)
    if not places:
        places = [execution.pick_place(app)]  # fails: the app is not live anywhere
    for live in places:
        t, layout = ctx.transport(live.node), NodeLayout(live.node.root)
        for name in files:
            path = f"{layout.app_logs(app.name)}/{name}.log"
            r = t.run(["tail", "-n", str(lines), "--", path], check=False)
            text = r.stdout if r.rc == 0 else f"({r.stderr.strip() or 'cannot read it'})\n"
            ctx.emit("output", output=f"==> {live.node.name} {name}.log <==\n{text}")
    return f"the last {lines} lines of {', '.join(files)} of {app.name} on {len(places)} node(s)", {}
