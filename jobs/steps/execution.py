"""Running an app's commands on a node as part of a job: live output into the job's events.

Used by `run`, cron scripts and `script:` database updates: the command runs
through toppcloud-exec with the release's env file (the same environment as
web), its output becomes `output` events as it comes (so `jobs follow` and
the admin show it live), capped at JOBS_OUTPUT_CAP_JOB per job.
"""

from django.conf import settings

from jobs.engine.context import FlowFailed
from jobs.steps.environment import mask_app_secrets
from jobs.models import LiveRelease
from nodeops import release as node_release
from nodeops import runtime
from nodeops.node_users import app_user
from toppcloud_site.records.models import App


class OutputRecorder:
    """on_output callback: each piece of output becomes an `output` event until the job's cap is spent."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.dropped = 0

    def __call__(self, text):
        if self.ctx.job.output_bytes >= settings.JOBS_OUTPUT_CAP_JOB:
            self.dropped += len(text.encode())
            return
        self.ctx.emit("output", output=text)

    def close(self):
        if self.dropped:
            self.ctx.emit("log", text=f"{self.dropped} more bytes of output were not stored: this job's cap of "
                                      f"{settings.JOBS_OUTPUT_CAP_JOB} bytes was reached")


def run_in_release(ctx, t, layout, app, release, argv, *, timeout, log=None, label=None):
    """Run argv in the release's directory and environment on the node; an ExecResult.

    A command still running after `timeout` seconds is stopped with all its
    children; so is a command whose job's worker dies (the node sees its ssh
    session end).
    """
    mask_app_secrets(App.objects.get(name=app))
    words = runtime.exec_argv(layout, node_release.env_file(layout, app, release), argv, user=app_user(app),
                              chdir=node_release.release_dir(layout, app, release), timeout=timeout,
                              log=log, label=label, watch_stdin=True)
    recorder = OutputRecorder(ctx)
    try:
        result = runtime.run_streaming(t, words, recorder, timeout=timeout + 60)
    except runtime.ExecError as exc:
        raise FlowFailed(f"{argv[0]} did not run: {exc}") from None
    finally:
        recorder.close()
    return result


def live_places(app):
    """Where the app is live, one row per node (its first location there), by node name."""
    seen, places = set(), []
    for live in (LiveRelease.objects.filter(app=app).select_related("node", "release")
                 .order_by("node__name", "host", "path")):
        if live.node_id not in seen:
            seen.add(live.node_id)
            places.append(live)
    return places


def internal_path(live, path):
    """The path of an internal request as nginx would pass it on: the location's prefix, then the app's path."""
    return live.path.rstrip("/") + path


def script_name(live):
    """The SCRIPT_NAME nginx gives the app at this location ("" at "/")."""
    return live.path.rstrip("/")


def pick_place(app, node_name=None):
    """The LiveRelease to run on: on node_name, or the first node (by name) where the app is live."""
    places = live_places(app)
    if node_name is not None:
        places = [p for p in places if p.node.name == node_name]
        if not places:
            raise FlowFailed(f"{app.name} is not live on node {node_name!r}")
    if not places:
        raise FlowFailed(f"{app.name} is not live on any node: deploy it first")
    return places[0]
