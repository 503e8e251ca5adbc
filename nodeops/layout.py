"""Where things live on a node; see "A host (node)" in DESIGN.md."""

import os

from .validate import validate_name, validate_root


class NodeLayout:
    def __init__(self, root):
        self.root = validate_root(root)
        j = os.path.join
        self.apps = j(root, "apps")
        self.logs = j(root, "logs")
        self.backups = j(root, "backups")
        self.run = j(root, "run")
        self.tmp = j(root, "tmp")
        self.bin = j(root, "bin")
        self.exec_script = j(self.bin, "toppcloud-exec")  # nodeops/hostside/node_exec.py
        self.gunicorn_logging = j(self.bin, "gunicorn-logging.json")

        self.nginx_dir = j(self.run, "nginx")
        self.nginx_conf = j(self.nginx_dir, "nginx.conf")
        self.nginx_sites = j(self.nginx_dir, "sites")
        self.nginx_tmp = j(self.nginx_dir, "tmp")
        self.tls_dir = j(self.nginx_dir, "tls")  # certificates and their keys (nodeops/frontdoor.py)
        self.acme_dir = j(self.run, "acme")  # served at /.well-known/acme-challenge/ (certbot --webroot)
        self.nginx_pid = j(self.nginx_dir, "nginx.pid")
        self.nginx_sock = j(self.nginx_dir, "nginx.sock")  # a balancer node's nginx listens here, not on its port
        self.nginx_error_log = j(self.logs, "nginx-error.log")
        self.nginx_access_log = j(self.logs, "nginx-access.log")

        self.supervisor_dir = j(self.run, "supervisor")
        self.supervisor_conf = j(self.supervisor_dir, "supervisord.conf")
        self.supervisor_programs = j(self.supervisor_dir, "programs")
        self.supervisor_sock = j(self.supervisor_dir, "supervisor.sock")
        self.supervisor_pid = j(self.supervisor_dir, "supervisord.pid")
        self.supervisor_log = j(self.supervisor_dir, "supervisord.log")

    def directories(self):
        """(path, mode) of every directory node setup creates, parents first."""
        return [
            (self.root, 0o755),
            (self.apps, 0o755),
            (self.logs, 0o755),
            (self.backups, 0o700),  # backups hold app data
            (self.run, 0o755),
            (self.nginx_dir, 0o755),
            (self.nginx_sites, 0o755),
            # nginx creates its temp dirs in here owned by its worker user.
            (self.nginx_tmp, 0o755),
            (self.tls_dir, 0o700),
            (self.acme_dir, 0o755),
            (self.supervisor_dir, 0o700),  # the control socket lives here
            (self.supervisor_programs, 0o755),
            (self.tmp, 0o700),
            (self.bin, 0o755),
        ]

    # Per-app paths, for the deploy flows.
    def app_dir(self, app):
        return os.path.join(self.apps, validate_name(app, "app"))

    def releases_dir(self, app):
        return os.path.join(self.app_dir(app), "releases")

    def venvs_dir(self, app):
        return os.path.join(self.app_dir(app), "venvs")

    def env_dir(self, app):
        return os.path.join(self.app_dir(app), "env")

    def home_dir(self, app):
        """$HOME of the app's processes: the one directory under the app's own that its user owns."""
        return os.path.join(self.app_dir(app), "home")

    def files_dir(self, app):
        return os.path.join(self.app_dir(app), "files")

    def writable_dir(self, app):
        return os.path.join(self.app_dir(app), "writable")

    def request_gate(self, app):
        """The file a restore holds the app's requests with (nodeops/hostside/node_data.py _requests_held)."""
        return os.path.join(self.app_dir(app), "requests.gate")

    def app_logs(self, app):
        return os.path.join(self.logs, validate_name(app, "app"))

    def cron_log(self, app):
        return os.path.join(self.app_logs(app), "cron.log")

    def app_backups(self, app):
        return os.path.join(self.backups, validate_name(app, "app"))
