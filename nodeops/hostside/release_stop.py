# One program on the node does what `supervisorctl stop`, `rm` and
# `supervisorctl update` did in three ssh round trips and two supervisorctl
# starts: it speaks supervisord's XML-RPC on its unix socket.
import os, sys, xmlrpc.client
sock_path, name, conf = sys.argv[1:4]
#include supervisor_rpc
try:
    # TERM, then wait until gunicorn has finished its requests in flight (at most stopwaitsecs).
    rpc.stopProcess(f"{name}:{name}", True)
except xmlrpc.client.Fault as exc:
    if "BAD_NAME" not in exc.faultString:  # no such group: it was stopped before
        sys.exit(f"supervisord could not stop {name}: {exc.faultString}")
try:
    rpc.removeProcessGroup(name)
except xmlrpc.client.Fault as exc:
    if "BAD_NAME" not in exc.faultString:
        sys.exit(f"supervisord could not forget {name}: {exc.faultString}")
if os.path.exists(conf):
    os.remove(conf)
