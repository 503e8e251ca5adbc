"""Makes an app's system user and gives its directories their owners and modes (run on a node).

The control plane's side (the user's name, the spec, running this) is
nodeops/node_users.py, whose docstring shows what is made. Run by the node's
python3 as root: `python3 -I -c SOURCE SPEC_JSON`. It is idempotent and prints
one JSON line: {"user": name or null, "changed": [...]}. Run by a node whose
ssh user is not root, it changes nothing and says {"user": null}.
"""

import json
import os
import re
import stat
import subprocess
import sys
import time


def comment(app):
    """The user's GECOS field: who made it, for which app."""
    return "toppcloud app " + app


class Refused(Exception):
    pass


def _run(argv):
    """useradd/usermod, retried while another one holds /etc/passwd's lock (exit 1 or 10)."""
    for attempt in range(30):
        r = subprocess.run(argv, capture_output=True, text=True)
        if r.returncode == 0:
            return r
        if "lock" not in r.stderr or attempt == 29:
            return r
        time.sleep(0.2)


def _user(spec, changed):
    import grp
    import pwd

    name, want = spec["user"], comment(spec["app"])
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        try:  # left behind by a userdel while nginx's user was still in it
            grp.getgrnam(name)
            group = ["--gid", name]
        except KeyError:
            group = ["--user-group"]
        r = _run(["useradd", "--system", *group, "--no-create-home", "--home-dir", spec["home"],
                  "--shell", "/usr/sbin/nologin", "--comment", want, name])
        try:
            pw = pwd.getpwnam(name)  # made by us, or by a deploy of the app to another root meanwhile
        except KeyError:
            raise Refused(f"useradd {name} failed: {r.stderr.strip()}") from None
        if r.returncode == 0:
            changed.append("created user " + name)
    if pw.pw_gecos != want or pw.pw_uid == 0:
        raise Refused(f"the system user {name} exists but is not toppcloud's user of app {spec['app']} (its "
                      f"comment is {pw.pw_gecos!r}, not {want!r}): remove or rename it")
    return pw


def _nginx_user(spec):
    try:
        with open(spec["nginx_conf"]) as f:
            m = re.search(r"^\s*user\s+([^\s;]+)", f.read(), re.M)
    except FileNotFoundError:
        return None
    return m.group(1) if m else None


def _status_groups(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except OSError:
        pass
    return None


def _nginx_workers(master):
    """pids of the master's workers that accept requests (not those shutting down)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == master and b"worker process" in cmd and b"shutting down" not in cmd:
            found.append(int(entry))
    return found


def _nginx_in_group(spec, group, gid, changed):
    """nginx's worker user in the app's group, and nginx's workers running with it.

    Workers take their groups when they start, so nginx is reloaded
    (gracefully) before the app's directory is closed: old workers would
    fail to read its static files from then on.
    """
    import grp
    import signal

    worker = _nginx_user(spec)
    if not worker:
        return
    if worker not in grp.getgrgid(gid).gr_mem:
        r = _run(["usermod", "--append", "--groups", group, worker])
        if r.returncode != 0:
            raise Refused(f"usermod could not add nginx's user {worker} to group {group}: {r.stderr.strip()}")
        changed.append(f"added {worker} to group {group}")
    try:
        with open(spec["nginx_pid"]) as f:
            master = int(f.read().strip())
        os.kill(master, 0)
    except (OSError, ValueError):
        return  # not running: it gets the group when it starts
    if all(gid in (_status_groups(w) or ()) for w in _nginx_workers(master)):
        return
    os.kill(master, signal.SIGHUP)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        workers = _nginx_workers(master)
        if workers and all(gid in (_status_groups(w) or ()) for w in workers):
            changed.append("reloaded nginx for its new group")
            return
        time.sleep(0.05)
    raise Refused(f"nginx's workers did not take group {group} within 15 s; see its error log")


def _dir(path, uid, gid, mode, changed):
    """`path` a directory (not a symlink) owned uid:gid with mode."""
    try:
        os.mkdir(path, mode)
        changed.append("created " + path)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise Refused(f"{path} exists and is not a directory: move it away")
    if (st.st_uid, st.st_gid) != (uid, gid):
        os.chown(path, uid, gid, follow_symlinks=False)
        changed.append(f"owner of {path}")
    if stat.S_IMODE(st.st_mode) != mode:
        os.chmod(path, mode)
        changed.append(f"mode of {path}")


def _own_tree(path, uid, gid, changed):
    """Everything under `path` owned uid:gid, if its top is not yet (a node from before app users, a restore).

    By file descriptor, never following a symlink: the app may own what is
    in there, and must not turn root's chown onto a file outside.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode) or (st.st_uid, st.st_gid) == (uid, gid):
        return
    os.chown(path, uid, gid, follow_symlinks=False)
    for _, dirs, files, fd in os.fwalk(path):
        for name in dirs + files:
            entry = os.stat(name, dir_fd=fd, follow_symlinks=False)
            # A hard link to a file elsewhere must not change hands (protected_hardlinks aside).
            if stat.S_ISREG(entry.st_mode) and entry.st_nlink > 1:
                continue
            os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)
    changed.append(f"owner of {path} and everything in it")


def _own_file(path, uid, gid, mode, changed, create=False):
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, flags, mode)
    except FileNotFoundError:
        return
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return
        if (st.st_uid, st.st_gid) != (uid, gid):
            os.fchown(fd, uid, gid)
            changed.append(f"owner of {path}")
        if stat.S_IMODE(st.st_mode) != mode:
            os.fchmod(fd, mode)
    finally:
        os.close(fd)


def ensure(spec):
    changed = []
    if os.geteuid() != 0:
        return {"user": None, "changed": changed}
    pw = _user(spec, changed)
    uid, gid = pw.pw_uid, pw.pw_gid
    _nginx_in_group(spec, spec["user"], gid, changed)
    os.makedirs(os.path.dirname(spec["app_dir"]), exist_ok=True)
    _dir(spec["app_dir"], 0, gid, 0o750, changed)
    _dir(spec["home"], uid, gid, 0o700, changed)
    _dir(spec["env_dir"], 0, gid, 0o750, changed)
    for name in sorted(os.listdir(spec["env_dir"])):
        path = os.path.join(spec["env_dir"], name)
        if name.endswith((".env", ".env.previous")):
            _own_file(path, uid, gid, 0o600, changed)
        elif name.endswith(".gunicorn.py"):  # read by the app's gunicorn; only paths in it
            _own_file(path, 0, 0, 0o644, changed)
    for tree in ("files", "writable"):
        _own_tree(spec[tree], uid, gid, changed)
    if os.path.isdir(spec["writable"]):  # a writable static directory new in this release was made by root
        for name in sorted(os.listdir(spec["writable"])):
            _own_tree(os.path.join(spec["writable"], name), uid, gid, changed)
    # Releases uploaded before rsync stopped keeping the control plane's owner.
    if os.path.isdir(spec["releases"]):
        for name in sorted(os.listdir(spec["releases"])):
            _own_tree(os.path.join(spec["releases"], name), 0, 0, changed)
    os.makedirs(os.path.dirname(spec["logs"]), exist_ok=True)
    _dir(spec["logs"], 0, gid, 0o750, changed)
    for name in ("access.log", "cron.log"):
        _own_file(os.path.join(spec["logs"], name), uid, gid, 0o640, changed, create=True)
    return {"user": spec["user"], "changed": changed}


def main(argv):
    try:
        result = ensure(json.loads(argv[0]))
    except Refused as exc:
        sys.exit(str(exc))
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
