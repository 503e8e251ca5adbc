# Finds the interpreter an app's `python = 3.N` (or `3`) asks for on the node: python3.N in /usr/bin,
# /usr/local/bin, those toppcloud installed under the node root (uv, <root>/python/*/bin), the node's
# extra directories (TOPPCLOUD_PYTHON_DIRS) and PATH, in that order; each candidate is run to learn its
# real version and executable (a pyenv shim resolves to the binary behind it), as an unprivileged user
# (an interpreter the app's user cannot run is no use to it). None found and uv on the
# node: `uv python install` into <root>/python, then look again. Prints one JSON line:
# {"python": path, "version": "3.12.1"} or {"error": why, "have": {"3.11": path, ...}}.
import glob, json, os, re, shutil, subprocess, sys
wanted, installs, extra = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
ASK = "import json, sys; print(json.dumps([list(sys.version_info[:3]), sys.executable]))"
NAME = re.compile(r"python3\.[0-9]+")


def dirs():
    seen = []
    installed = sorted(glob.glob(os.path.join(installs, "*", "bin")))
    for d in ["/usr/bin", "/usr/local/bin", *installed, *extra, *os.environ.get("PATH", "").split(os.pathsep)]:
        if d and os.path.isabs(d) and d not in seen and os.path.isdir(d):
            seen.append(d)
    return seen


def candidates():
    """{name: [paths]} of python3.N (and python3) executables, in search order."""
    found = {}
    for d in dirs():
        for name in sorted(os.listdir(d)):
            path = os.path.join(d, name)
            if (NAME.fullmatch(name) or name == "python3") and os.access(path, os.X_OK) and os.path.isfile(path):
                found.setdefault(name, []).append(path)
    return found


def ask(path):
    """(version, executable) of the interpreter at path, as an app's user would run it (root runs it as
    nobody: one under /root, or linked against a library there, would not run for the app); None if not."""
    as_app = ["runuser", "-u", "nobody", "--"] if os.getuid() == 0 and shutil.which("runuser") else []
    try:
        r = subprocess.run([*as_app, path, "-I", "-c", ASK], capture_output=True, text=True, timeout=30,
                           stdin=subprocess.DEVNULL, cwd="/")
        (major, minor, micro), executable = json.loads(r.stdout)
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    return f"{major}.{minor}.{micro}", executable


def matches(version):
    return version == wanted or version.startswith(wanted + ".")


def look():
    names = candidates()
    order = ["python3", *sorted(n for n in names if n != "python3")] if wanted == "3" else [f"python{wanted}"]
    for name in order:
        for path in names.get(name, []):
            answer = ask(path)
            if answer and matches(answer[0]):
                return {"python": answer[1], "version": answer[0]}
    return None


def have():
    """{"3.N": path} of the interpreters an app could use; [path] of those it could not (run as nobody)."""
    versions, unusable = {}, []
    for name, paths in candidates().items():
        if name != "python3":
            for path in paths:
                if ask(path):
                    versions.setdefault(name[len("python"):], path)
                    break
                unusable.append(path)
    return dict(sorted(versions.items(), key=lambda kv: [int(p) for p in kv[0].split(".")])), unusable


found = look()
if found is None:
    uv = shutil.which("uv") or next((p for d in dirs() for p in [os.path.join(d, "uv")] if os.access(p, os.X_OK)), None)
    versions, unusable = have()
    named = ", ".join(f"{v} ({p})" for v, p in versions.items()) or "none"
    if unusable:
        named += "; not runnable by an app's user: " + ", ".join(unusable)
    if uv is None:
        print(json.dumps({"error": f"no Python {wanted} on the node (it has: {named}), and no uv to install "
                                   "it with", "have": versions}))
        sys.exit(0)
    # Under the node root, its executables too (not in the ssh user's ~/.local/bin).
    existed = os.path.isdir(installs)
    env = dict(os.environ, UV_PYTHON_INSTALL_DIR=installs, UV_PYTHON_BIN_DIR=os.path.join(installs, "bin"))
    try:
        r = subprocess.run([uv, "python", "install", wanted], capture_output=True, text=True, timeout=900,
                           stdin=subprocess.DEVNULL, env=env)
        said = " / ".join(l.strip() for l in (r.stdout + r.stderr).splitlines() if l.strip())[-500:]
        failed = r.returncode != 0 and f"exited {r.returncode}: {said}"
    except (OSError, subprocess.SubprocessError) as exc:
        failed = f"did not run: {exc}"
    found = None if failed else look()
    if found is None and not existed:  # what uv made of it (a lock file) is not left behind
        shutil.rmtree(installs, ignore_errors=True)
    if found is None:
        print(json.dumps({"error": f"no Python {wanted} on the node (it has: {named}); `uv python install "
                                   f"{wanted}` {failed or 'installed none that answers'}", "have": versions}))
        sys.exit(0)
    found["installed_with"] = uv
print(json.dumps(found))
