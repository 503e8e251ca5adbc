# HAProxy's runtime API on the balancer node (nodeops/balancer.py): its admin socket for the servers'
# states, drain/maint/ready and waiting until a server is idle; its master socket for a reload.
#   lb_admin.py states SOCK                         -> JSON list of every server's state
#   lb_admin.py set SOCK BACKEND SERVER STATE       -> ready | drain | maint
#   lb_admin.py wait_idle SOCK BACKEND SERVER TIMEOUT -> seconds it took (exit 3 on timeout)
#   lb_admin.py push CFG STATE_FILE SOCK MASTER_SOCK  (candidate on stdin) -> unchanged | reloaded
import csv, fcntl, io, json, os, re, shutil, socket, subprocess, sys, tempfile, time


def locked(sock):
    """Hold the balancer's admin lock until this program exits: a `set` never lands between push's
    "show servers state" and the reload that loads it (it would be lost)."""
    fd = os.open(sock + ".lock", os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def ask(sock, command, timeout=10):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    try:
        s.connect(sock)
        s.sendall(command.encode() + b"\n")
        s.shutdown(socket.SHUT_WR)  # one command: the master's CLI answers, then closes
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    finally:
        s.close()
    return b"".join(chunks).decode(errors="replace")


def stat_rows(sock):
    text = ask(sock, "show stat").lstrip("# ")
    return [r for r in csv.DictReader(io.StringIO(text)) if r.get("svname") not in ("FRONTEND", "BACKEND", None)]


# srv_admin_state bits (HAProxy's SRV_ADMF_*): FMAINT 0x01, IMAINT 0x02, CMAINT 0x04, FDRAIN 0x08,
# IDRAIN 0x10, RMAINT 0x20, HMAINT 0x40.
def admin_states(sock):
    out = {}
    lines = ask(sock, "show servers state").splitlines()
    header = next((line[2:].split() for line in lines if line.startswith("# be_id")), None)
    for line in lines:
        if not line or line.startswith("#") or header is None or len(line.split()) < len(header):
            continue
        row = dict(zip(header, line.split()))
        adm = int(row["srv_admin_state"])
        admin = "maint" if adm & 0x67 else "drain" if adm & 0x18 else "ready"
        out[(row["be_name"], row["srv_name"])] = admin
    return out


def states(sock):
    admin = admin_states(sock)
    result = []
    for r in stat_rows(sock):
        status = r["status"]
        # "UP 1/2" (going down) is UP, "DOWN 1/2" (coming up) DOWN, "MAINT(via)" MAINT; unchecked counts as UP.
        state = "UP" if status == "no check" else re.split(r"[ (]", status, 1)[0].upper()
        result.append({"backend": r["pxname"], "server": r["svname"], "state": state,
                       "status": status, "admin": admin.get((r["pxname"], r["svname"]), "ready"),
                       "last_change_s": int(r["lastchg"] or 0), "sessions": int(r["scur"] or 0),
                       "check": r.get("check_status", "")})
    return result


def sessions(sock, backend, server):
    for r in stat_rows(sock):
        if (r["pxname"], r["svname"]) == (backend, server):
            return int(r["scur"] or 0)
    sys.exit(f"the balancer has no server {server} in backend {backend}")


def push(cfg, state_file, sock, master_sock):
    new = sys.stdin.buffer.read()
    try:
        with open(cfg, "rb") as f:
            same = f.read() == new
    except FileNotFoundError:
        same = False
    if same:
        print("unchanged")
        return
    haproxy = shutil.which("haproxy", path=os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin")
    fd, candidate = tempfile.mkstemp(dir=os.path.dirname(cfg), prefix=".haproxy.cfg.", suffix=".new")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(new)
        os.chmod(candidate, 0o644)
        r = subprocess.run([haproxy, "-c", "-f", candidate], capture_output=True, text=True)
        if r.returncode != 0:
            said = "\n".join(line for line in (r.stderr + r.stdout).splitlines() if "ALERT" in line)
            sys.exit("haproxy -c: " + ((said or r.stderr + r.stdout).replace(candidate, cfg).strip()
                                       or f"failed ({r.returncode})"))
        # The servers' states (drained, in maintenance, down) as they are now: the new worker loads them.
        locked(sock)  # until the new worker is up (this program's end)
        try:
            saved = ask(sock, "show servers state")
        except OSError:
            saved = ""
        if saved.startswith("1\n") or saved.startswith("1 "):
            with open(state_file + ".tmp", "w") as f:
                f.write(saved)
            os.replace(state_file + ".tmp", state_file)
        os.replace(candidate, cfg)
    finally:
        if os.path.exists(candidate):
            os.remove(candidate)
    print("changed")
    sys.stdout.flush()
    before = workers(master_sock)
    ask(master_sock, "reload")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        time.sleep(0.05)
        try:
            now = workers(master_sock)
        except OSError:
            continue  # the master re-executes itself: its socket is back in a moment
        if now and not (now & before):
            try:
                ask(sock, "show info", timeout=2)
            except OSError:
                continue
            print("reloaded")
            return
    sys.exit("haproxy did not start a worker with the new config within 20 s; see its log")


def workers(master_sock):
    """The pids of the master's current workers (not the old ones finishing their requests)."""
    pids, section = set(), "master"
    for line in ask(master_sock, "show proc").splitlines():
        if line.startswith("#"):
            section = "old" if "old" in line else "workers" if "worker" in line else section
            continue
        parts = line.split()
        if section == "workers" and len(parts) > 1 and parts[1] == "worker":
            pids.add(int(parts[0]))
    return pids


op, rest = sys.argv[1], sys.argv[2:]
if op == "states":
    print(json.dumps(states(rest[0])))
elif op == "set":
    sock, backend, server, state = rest
    locked(sock)
    said = ask(sock, f"set server {backend}/{server} state {state}").strip()
    if said:
        sys.exit(f"haproxy: {said}")
    print(json.dumps({"backend": backend, "server": server, "admin": state}))
elif op == "wait_idle":
    sock, backend, server, timeout = rest
    started = time.monotonic()
    while True:
        n = sessions(sock, backend, server)
        if n == 0:
            print(json.dumps({"seconds": round(time.monotonic() - started, 3)}))
            break
        if time.monotonic() - started > float(timeout):
            print(json.dumps({"sessions": n}))
            sys.exit(3)
        time.sleep(0.1)
elif op == "push":
    push(*rest)
else:
    sys.exit(f"unknown operation {op!r}")
