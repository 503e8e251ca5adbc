import json, os, sys, xmlrpc.client
sock_path, programs = sys.argv[1:3]
wanted = json.loads(sys.argv[3])  # app -> releases to keep running (the apps to reconcile)
known = sorted(json.loads(sys.argv[4]), key=len, reverse=True)  # every app name, longest first
#include supervisor_rpc
def owner(name):
    for app in known:
        if name.startswith(f"app-{app}-") and len(name) > len(app) + 5:
            return app, name[len(app) + 5:]
    return None, None
groups = {p["group"]: p["statename"] for p in rpc.getAllProcessInfo()}
files = {}
for entry in os.listdir(programs):
    for suffix in (".conf", ".conf.tmp"):
        if entry.endswith(suffix):
            files.setdefault(entry[:-len(suffix)], []).append(os.path.join(programs, entry))
stopped, kept, unknown = [], [], []
for name in sorted(set(groups) | set(files)):
    if not name.startswith("app-"):
        continue  # toppcloud's own programs (nginx)
    app, release = owner(name)
    if app is None:
        unknown.append(name)
        continue
    if app not in wanted:
        continue  # not ours to judge now (a job of that app is running)
    if release in wanted[app]:
        kept.append(name)
        continue
    state = groups.get(name, "NO PROCESS")
    if name in groups:
        try:
            # TERM and wait (at most stopwaitsecs): requests in flight, if any, are finished.
            rpc.stopProcess(f"{name}:{name}", True)
        except xmlrpc.client.Fault as exc:
            if "NOT_RUNNING" not in exc.faultString and "BAD_NAME" not in exc.faultString:
                sys.exit(f"supervisord could not stop {name}: {exc.faultString}")
        try:
            rpc.removeProcessGroup(name)
        except xmlrpc.client.Fault as exc:
            if "BAD_NAME" not in exc.faultString:
                sys.exit(f"supervisord could not forget {name}: {exc.faultString}")
    for path in files.get(name, []):
        os.remove(path)
    stopped.append({"app": app, "release": release, "program": name, "state": state,
                    "files": sorted(os.path.basename(p) for p in files.get(name, []))})
print(json.dumps({"stopped": stopped, "kept": kept, "unknown": unknown}))
