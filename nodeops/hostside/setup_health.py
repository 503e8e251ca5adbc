import http.client, socket, sys, time, urllib.parse, urllib.request
url, tries = sys.argv[1], int(sys.argv[2])
unix = sys.argv[3] if len(sys.argv) > 3 else None  # nginx on a unix socket (a balancer node's own)


class _Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(3)
        self.sock.connect(unix)


def get():
    if unix is None:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # ignore http_proxy
        with opener.open(url, timeout=3) as r:
            return r.status, r.read().decode("utf-8", "replace")
    conn = _Unix("localhost", timeout=3)
    try:
        conn.request("GET", urllib.parse.urlsplit(url).path)
        r = conn.getresponse()
        return r.status, r.read().decode("utf-8", "replace")
    finally:
        conn.close()


last = "no attempt"
for attempt in range(tries):
    if attempt:
        time.sleep(0.25)
    try:
        status, body = get()
        if status == 200 and body == "ok\n":
            print("ok")
            sys.exit(0)
        last = f"HTTP {status}: {body[:200]!r}"
    except Exception as exc:
        last = f"{type(exc).__name__}: {exc}"
sys.exit(f"GET {url} failed after {tries} attempts: {last}")
