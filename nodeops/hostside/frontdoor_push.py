# Tests the candidate together with the live nginx.conf (in a private directory, so a concurrent
# push is neither seen nor disturbed); only if nginx -t passes does it replace the live site
# file atomically, remove the older per-app files and unused certificates, and reload.
import os, shutil, subprocess, sys, tempfile
conf, sites, name, tmp, errlog, tls_dir, pidfile = sys.argv[1:8]
keep_tls = set(sys.argv[8:])
new = sys.stdin.buffer.read()
with open(conf) as f:
    main = f.read()
include = f"include {sites}/*.conf;"
if include not in main:
    sys.exit(f"{conf} does not include {sites}/*.conf; run node setup again")
live = os.path.join(sites, name)
others = [f for f in os.listdir(sites) if f.endswith(".conf") and f != name]
try:
    with open(live, "rb") as f:
        same = f.read() == new
except FileNotFoundError:
    same = False
if same and not others:
    print("unchanged")
    sys.exit(0)
nginx = shutil.which("nginx", path=os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin")
test_dir = tempfile.mkdtemp(prefix="nginx-test-", dir=tmp)
try:
    test_sites = os.path.join(test_dir, "sites")
    os.mkdir(test_sites)
    with open(os.path.join(test_sites, name), "wb") as f:
        f.write(new)
    test_conf = os.path.join(test_dir, "nginx.conf")
    with open(test_conf, "w") as f:
        f.write(main.replace(include, f"include {test_sites}/*.conf;"))
    r = subprocess.run([nginx, "-t", "-q", "-e", errlog, "-c", test_conf], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit("nginx -t: " + ((r.stderr + r.stdout).replace(test_sites, sites).strip()
                                 or f"failed ({r.returncode})"))
finally:
    shutil.rmtree(test_dir, ignore_errors=True)
fd, part = tempfile.mkstemp(dir=sites, prefix="." + name, suffix=".tmp")  # not matched by *.conf
with os.fdopen(fd, "wb") as f:
    f.write(new)
os.chmod(part, 0o644)
os.replace(part, live)
for f in others:
    os.remove(os.path.join(sites, f))
print("changed")
sys.stdout.flush()

import signal, time
def _cleanup_tls():
    for f in os.listdir(tls_dir) if os.path.isdir(tls_dir) else []:
        if os.path.join(tls_dir, f) not in keep_tls:
            os.remove(os.path.join(tls_dir, f))
with open(pidfile) as f:
    master = int(f.read())
with open(f"/proc/{master}/cmdline", "rb") as f:
    if conf.encode() not in f.read():
        sys.exit(f"pid {master} from {pidfile} is not the nginx running {conf}; run node setup again")
def workers():
    kids = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == master:
                        with open(f"/proc/{p}/cmdline", "rb") as f:
                            kids[p] = f.read().decode(errors="replace")
            except (OSError, IndexError, ValueError):
                pass
    return kids
# HUP the master, then wait until it runs workers with the new config and every old worker has
# stopped accepting: nginx renames a worker "shutting down" just before it closes its listening
# sockets (it then finishes its requests in flight). From then on every new connection meets the
# new config, so the caller may stop an old release.
before = set(workers())
os.kill(master, signal.SIGHUP)
deadline = time.monotonic() + 15
while time.monotonic() < deadline:
    now = workers()
    if set(now) - before and all("shutting down" in now[p] for p in before if p in now):
        time.sleep(0.05)  # the old workers close their sockets right after the rename
        _cleanup_tls()
        print("reloaded")
        sys.exit(0)
    time.sleep(0.01)
sys.exit("nginx did not switch to workers with the new config within 15 s; see its error log")
