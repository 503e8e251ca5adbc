#!/usr/bin/env python3
import os
import sys

# toppcloud's commands that a warm process (manage.py warm) may run: they start in milliseconds from there.
WARM_COMMANDS = {"app", "backup", "clear", "config", "cron", "deploy", "disable", "enable", "front_door", "jobs",
                 "logs", "node", "ping_node", "restore", "rollback", "run", "setup_node", "status"}


def warm_client(argv):
    """The command's exit code from `manage.py warm` (jobs/management/commands/warm.py), or None: run it here.

    Only the standard library: this runs before Django is imported.
    """
    if len(argv) < 2 or argv[1] not in WARM_COMMANDS or os.environ.get("TOPPCLOUD_WARM") == "off":
        return None
    import json
    import signal
    import socket

    var = os.environ.get("TOPPCLOUD_VAR_DIR") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "var")
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        conn.connect(os.path.join(var, "run", "manage.sock"))
        request = {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}
        socket.send_fds(conn, [json.dumps(request).encode()], [0, 1, 2])
        reply = conn.recv(64)
    except OSError:
        conn.close()
        return None
    if not reply.startswith(b"pid "):
        return None  # not for this environment: run here
    pid = int(reply[4:])
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda number, _: os.kill(pid, number))  # Ctrl-C reaches the command
    reply = conn.recv(64)
    return int(reply[5:]) if reply.startswith(b"exit ") else 1


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "toppcloud_site.settings")
    code = warm_client(sys.argv)
    if code is not None:
        sys.exit(code)
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
