import json, os, shutil, sys
releases, env_dir, programs, prefix, venvs = sys.argv[1:6]
keep = set(json.loads(sys.argv[6]))
removed, running = [], []
for name in sorted(os.listdir(releases)) if os.path.isdir(releases) else []:
    if name in keep:
        continue
    if os.path.exists(os.path.join(programs, prefix + name + ".conf")):
        running.append(name)  # never pull the code out from under a running release
        continue
    shutil.rmtree(os.path.join(releases, name))
    # Its env file, gunicorn config (and gunicorn's compiled copy of it), kept previous env.
    for where in (env_dir, os.path.join(env_dir, "__pycache__")):
        for entry in os.listdir(where) if os.path.isdir(where) else []:
            if entry.split(".", 1)[0] == name:
                os.unlink(os.path.join(where, entry))
    removed.append(name)
# Venvs that no remaining release uses (each release names its venv in .toppcloud-venv).
used = set()
for name in os.listdir(releases) if os.path.isdir(releases) else []:
    try:
        with open(os.path.join(releases, name, ".toppcloud-venv")) as f:
            used.add(f.read().strip())
    except FileNotFoundError:
        pass
removed_venvs = []
for key in sorted(os.listdir(venvs)) if os.path.isdir(venvs) else []:
    if os.path.join(venvs, key) not in used:
        shutil.rmtree(os.path.join(venvs, key))
        removed_venvs.append(key)
print(json.dumps({"removed": removed, "running": running, "removed_venvs": removed_venvs}))
