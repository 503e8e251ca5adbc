import os, socket, sys, time
path = sys.argv[1]
for _ in range(100):
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
            sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit(f"supervisord did not open {path} within 10 seconds")
