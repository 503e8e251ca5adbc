# Writes files atomically (each to a temp file in its directory, then
# rename), each only if its bytes, mode or owner differ, after making missing
# directories with their modes. A JSON line (directories; each file's path,
# mode and size) arrives on stdin, then the files' bytes one after another:
# contents (secrets in env files) never reach argv. Prints the changed paths.
import json, os, pwd, sys, tempfile
spec = json.loads(sys.stdin.buffer.readline())
for path, mode in spec["dirs"]:
    if not os.path.isdir(path):
        os.makedirs(path, exist_ok=True)
        os.chmod(path, int(mode, 8))  # makedirs' mode is filtered by the umask
changed = []
for path, mode, size, owner in spec["files"]:
    data, mode = sys.stdin.buffer.read(size), int(mode, 8)
    if len(data) != size:
        sys.exit(f"{path}: {size} bytes were to come, {len(data)} came")
    ids = None
    if owner:
        try:
            pw = pwd.getpwnam(owner)
        except KeyError:
            sys.exit(f"{path}: its owner {owner} is not a user on this node")
        ids = (pw.pw_uid, pw.pw_gid)
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if f.read() == data and st.st_mode & 0o7777 == mode and (ids is None or (st.st_uid, st.st_gid) == ids):
                continue
    except FileNotFoundError:
        pass
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix="." + os.path.basename(path) + ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if ids:
            os.chown(tmp, *ids)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    changed.append(path)
print(json.dumps(changed))
