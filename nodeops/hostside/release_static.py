# The release's static directory around its build commands (app.ini `build`).
#   open DIR USER: DIR (made if missing) becomes the app user's to write; files hard-linked with the
#                  previous release are copied first, so a build never writes into the live release.
#   seal DIR:      DIR becomes the node's again (read-only to the app, readable by nginx); what the build
#                  left that nginx must not follow (a symlink, a device, a fifo) fails the build.
# Prints {"files": N, "bytes": B} of what DIR holds.
import json, os, pwd, shutil, stat, sys
mode, top = sys.argv[1], sys.argv[2]
me = os.getuid(), os.getgid()
counted = {"files": 0, "bytes": 0}


def unlinked(path, st):
    """A regular file shared with another release (or anything else) becomes a file of its own."""
    if st.st_nlink > 1:
        shutil.copy2(path, path + ".tc-copy", follow_symlinks=False)
        os.replace(path + ".tc-copy", path)


def open_dir(path, uid, gid):
    # Bottom-up: a directory is the app's only once what is in it was made safe while it was not.
    for entry in os.scandir(path):
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            open_dir(entry.path, uid, gid)
        else:
            if stat.S_ISREG(st.st_mode):
                unlinked(entry.path, st)
            os.lchown(entry.path, uid, gid)
    os.lchown(path, uid, gid)


def seal_dir(path, rel=""):
    # Top-down: each directory is the node's again before what is in it is looked at, so the app (whose
    # processes may still run) can no longer swap an entry for a symlink between the check and the chmod.
    os.lchown(path, *me)
    os.chmod(path, 0o755)
    for entry in os.scandir(path):
        name = os.path.join(rel, entry.name)
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            sys.exit(f"the build left a symlink in the static directory: {name} -> {os.readlink(entry.path)} "
                     "(copy the file instead: nginx serves this directory)")
        if stat.S_ISDIR(st.st_mode):
            seal_dir(entry.path, name)
        elif stat.S_ISREG(st.st_mode):
            unlinked(entry.path, st)  # a link the app made to a file of its own elsewhere stays its own
            os.lchown(entry.path, *me)
            os.chmod(entry.path, 0o644)
            counted["files"] += 1
            counted["bytes"] += st.st_size
        else:
            sys.exit(f"the build left {name} in the static directory, which is not a file or a directory")


if os.path.islink(top):
    sys.exit(f"the static directory {os.path.basename(top)} is a symlink in the release: name the directory itself")
if mode == "open":
    user = pwd.getpwnam(sys.argv[3])
    os.makedirs(top, mode=0o755, exist_ok=True)
    open_dir(top, user.pw_uid, user.pw_gid)
elif mode == "seal":
    if not os.path.isdir(top):
        sys.exit(f"the build left no static directory {os.path.basename(top)}")
    seal_dir(top)
else:
    sys.exit(f"unknown mode {mode!r}")
print(json.dumps(counted))
