"""Each app runs as a system user of its own: its name, and making it and its directories on a node.

The naming rule (app_user) is used by the control plane; the program for
the node is nodeops/hostside/node_users.py (run by the node's python3 as
root): `python3 -I -c SOURCE SPEC_JSON`. It is
idempotent and prints one JSON line: {"user": name or null, "changed": [...]}.

What it makes, for app `a` with user `u` (group `u`, nginx's worker user a member):

    apps/a/                   root:u 0750   closed to every other app
    apps/a/home/              u:u    0700   $HOME of the app's processes
    apps/a/env/               root:u 0750   the app cannot add or replace files here
    apps/a/env/<r>.env        u:u    0600   readable by the app alone (nginx is in the group)
    apps/a/files/, writable/  u:u           the app's own, every entry in them
    logs/a/                   root:u 0750   supervisord (root) writes app.log and error.log here,
    logs/a/access.log, cron.log  u:u 0640   so the app must not be able to replace them: it
                                            owns only the logs it writes itself
    apps/a/releases/, venvs/  root          readable, not writable, by the app

Run by a node whose ssh user is not root, it changes nothing and says
{"user": null}: the apps there run as that (unprivileged) user.
"""

import hashlib
import json
import re

from . import hostside
from .errors import NodeOpError
from .hostside.node_users import comment  # noqa: F401 (the user's GECOS field, as the node checks it)

MAX_USER = 32  # Linux user names (useradd, utmp)
_APP_RE = re.compile(r"[a-z][a-z0-9-]{0,62}")  # nodeops.validate.validate_name


def app_user(app):
    """The system user (and group) an app runs as.

    "tc-<app>" for app names up to 29 characters (app names are unique, so
    these are too); longer names give "tc_<first 12 characters>_<16 hex
    digits of sha256(app)>", 32 characters. '_' never occurs in an app name,
    so the two forms never meet. The node refuses a user of that name that
    is not the app's (see the comment checked in ensure()).
    """
    if not isinstance(app, str) or not _APP_RE.fullmatch(app):
        raise ValueError(f"app {app!r} is invalid: use 1 to 63 characters a-z, 0-9 and '-', starting with a letter")
    if len(app) <= MAX_USER - 3:
        return "tc-" + app
    return "tc_" + app[:12] + "_" + hashlib.sha256(app.encode()).hexdigest()[:16]


def spec_for(layout, app):
    """What ensure() needs to know, from a nodeops.layout.NodeLayout."""
    return {"app": app, "user": app_user(app), "app_dir": layout.app_dir(app), "home": layout.home_dir(app),
            "env_dir": layout.env_dir(app), "files": layout.files_dir(app), "writable": layout.writable_dir(app),
            "releases": layout.releases_dir(app), "logs": layout.app_logs(app), "nginx_conf": layout.nginx_conf,
            "nginx_pid": layout.nginx_pid}


class UserError(NodeOpError):
    """The app's user or its directories cannot be made right; the message says why."""


def ensure_app_user(t, emit, layout, app, python="/usr/bin/python3"):
    """Make the app's user and give its directories their owners and modes; the user's name, or None
    when the node's ssh user is not root (the app then runs as that user)."""
    spec = spec_for(layout, app)
    r = t.run([python, "-I", "-c", hostside.source("node_users"), json.dumps(spec, sort_keys=True)],
              check=False, timeout=120)
    # Named by what it does, not by its source text.
    emit("command", step="app user", argv=["node_users", json.dumps(spec, sort_keys=True)], rc=r.rc,
         stdout=r.stdout, stderr=r.stderr, seconds=round(r.seconds, 3))
    if r.rc != 0:
        raise UserError(r.stderr.strip()[-1500:] or f"making the user of {app} failed (exit {r.rc})")
    return json.loads(r.stdout.strip().splitlines()[-1])


def list_apps(t, layout, python="/usr/bin/python3"):
    """The apps that have a directory on the node (for setup_node)."""
    r = t.run([python, "-I", "-c", "import json, os, sys; d = sys.argv[1]; "
               "print(json.dumps(sorted(os.listdir(d)) if os.path.isdir(d) else []))", layout.apps])
    return [name for name in json.loads(r.stdout) if _APP_RE.fullmatch(name)]
