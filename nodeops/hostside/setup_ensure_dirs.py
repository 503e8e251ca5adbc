import json, os, stat, sys
changed = []
for path, mode in json.loads(sys.argv[1]):
    try:
        st = os.stat(path)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.mkdir(path, mode)
        os.chmod(path, mode)  # mkdir's mode is filtered by the umask
        changed.append(path)
        continue
    if not stat.S_ISDIR(st.st_mode):
        sys.exit(f"{path} exists and is not a directory")
    if st.st_mode & 0o7777 != mode:
        os.chmod(path, mode)
        changed.append(path)
print(json.dumps(changed))
