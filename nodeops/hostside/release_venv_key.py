# One round trip decides whether the venv can be reused: the key is computed
# where the venv lives (the interpreter and the requirements file there). The
# interpreter is the node's python3 running this (no python given), or the one
# app.ini's `python` found (its path and version are part of the key).
import hashlib, json, os, sys
release_dir, req, venvs, pin, marker, python, version = sys.argv[1:8]
data = b""
path = None
if req:
    path = os.path.join(release_dir, req)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        sys.exit(f"the requirements file {req} is not in the release")
interpreter = f"{python}\n{version}\n" if python else sys.version  # the node's python3: keys as before it
key = hashlib.sha256(f"{interpreter}\n{pin}\n".encode() + data).hexdigest()[:16]
venv = os.path.join(venvs, key)
# The release says which venv it uses, so prune can remove venvs no release uses.
with open(os.path.join(release_dir, ".toppcloud-venv"), "w") as f:
    f.write(venv)
# pip ignores blank lines and '#' comments; with nothing else, skip -r.
needed = any(l.strip() and not l.strip().startswith("#") for l in data.decode("utf-8", "replace").splitlines())
print(json.dumps({"venv": venv, "complete": os.path.exists(os.path.join(venv, marker)),
                  "requirements": path if needed else None}))
