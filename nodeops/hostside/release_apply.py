# Applying new config to a running release is one program on the node:
# load the app with the new env file in a separate process (a config that
# breaks the app must not reach gunicorn: its new workers would fail to boot
# and the master would stop), then put the file in place and send gunicorn
# HUP, which starts new workers (their environment from the new file, see
# runtime.gunicorn_config) and stops the old ones gracefully, the listening
# socket never closing. It waits until none of the old workers is left.
import json, os, subprocess, sys, time, xmlrpc.client
sock_path, name, exec_script, release_dir, new, env, runner, timeout, program_conf, user = sys.argv[1:11]
# The new file gets the owner of the one it replaces (the app's user): its gunicorn reads it on HUP.
owner = os.stat(env) if os.path.exists(env) else None
if owner:
    os.chown(new, owner.st_uid, owner.st_gid)
if os.path.exists(program_conf) and "--config" not in open(program_conf).read():
    os.remove(new)
    sys.exit(f"{name} was started by an older toppcloud, whose gunicorn does not reload its environment: "
             "deploy the app once, then config apply works")
CHECK = ("import importlib, sys; m, _, a = sys.argv[1].partition(':'); "
         "app = getattr(importlib.import_module(m), a); callable(app) or sys.exit(f'{sys.argv[1]} is not callable')")
try:
    check = subprocess.run([sys.executable, "-I", exec_script, "--user", user, "--chdir", release_dir, new, "--",
                            "python", "-c", CHECK, runner], stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, errors="replace", timeout=120)
    failed = check.returncode != 0 and (check.stdout + check.stderr).strip().splitlines()[-5:]
except subprocess.TimeoutExpired:
    failed = ["loading it took more than 120 s"]
if failed:
    os.remove(new)
    sys.exit(f"the app does not load with the new environment, which was not applied: {' / '.join(failed)}")
if new != env + ".previous" and os.path.exists(env):  # kept, to put back if the release fails after the reload
    with open(env, "rb") as f, open(os.open(env + ".previous.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
                                    "wb") as out:
        out.write(f.read())
        if owner:
            os.fchown(out.fileno(), owner.st_uid, owner.st_gid)
    os.replace(env + ".previous.tmp", env + ".previous")
os.replace(new, env)
#include supervisor_rpc
def workers(pid):
    found = set()
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[1] == str(pid) and fields[0] != "Z":
            found.add(int(entry))
    return found
def state():
    try:
        return rpc.getProcessInfo(f"{name}:{name}")
    except xmlrpc.client.Fault as exc:  # not under supervisord: the file is all there is to change
        return {"statename": "NOT RUNNING" if "BAD_NAME" in exc.faultString else exc.faultString}
# A release started a moment ago is STARTING until supervisord's startsecs have passed; gunicorn may
# not handle HUP yet (its default action ends the process): wait until it is RUNNING.
info, deadline = state(), time.monotonic() + 30
while info["statename"] == "STARTING" and time.monotonic() < deadline:
    time.sleep(0.1)
    info = state()
if info["statename"] != "RUNNING":
    print(json.dumps({"reloaded": False, "state": info["statename"]}))
    sys.exit(0)
master, started = info["pid"], time.monotonic()
old = workers(master)
rpc.signalProcess(f"{name}:{name}", "HUP")
while True:
    now = workers(master)
    if now and not now & old:
        break
    if time.monotonic() - started > float(timeout):
        sys.exit(f"gunicorn of {name} still has {len(now & old)} old workers {float(timeout):g} s after HUP")
    time.sleep(0.05)
print(json.dumps({"reloaded": True, "master": master, "old_workers": sorted(old), "new_workers": sorted(now),
                  "reload_seconds": round(time.monotonic() - started, 3)}))
