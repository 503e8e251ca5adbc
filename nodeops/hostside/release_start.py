# Starting a release is one program on the node: it picks a free port,
# writes the supervisor program with it, and adds only that program through
# supervisord's XML-RPC (what `supervisorctl update <name>` does), where the
# separate steps took four ssh round trips and a supervisorctl start-up.
import os, socket, sys, xmlrpc.client
sock_path, conf, name, logs, token, port = sys.argv[1:7]
if port == "0":
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
os.makedirs(logs, exist_ok=True)
with open(conf + ".tmp", "w") as f:
    f.write(sys.stdin.read().replace(token, port))
os.replace(conf + ".tmp", conf)
#include supervisor_rpc
[added, changed, _removed] = rpc.reloadConfig()[0]
try:
    if name in changed:  # the program was there with another port or command: replace it
        rpc.stopProcess(f"{name}:{name}", True)
        rpc.removeProcessGroup(name)
    if name in added or name in changed:
        rpc.addProcessGroup(name)  # autostart
    else:  # there already, unchanged (it had died, or a rollback to a release still running)
        rpc.startProcess(f"{name}:{name}", True)
except xmlrpc.client.Fault as exc:
    if "ALREADY_STARTED" not in exc.faultString:
        sys.exit(f"supervisord could not start {name}: {exc.faultString}")
print(port)
