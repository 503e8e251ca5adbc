# Asks one URL on the node, ignoring proxies and not following redirects (a
# health check answered with a redirect to a login page is not healthy).
# Polls until an HTTP answer arrives when given wait > 0. The request's
# method and headers arrive as argv, its body on stdin.
import json, socket, sys, time, urllib.error, urllib.request
method, url, host, wait, timeout = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5])
headers = json.loads(sys.argv[6])
body = sys.stdin.buffer.read() if method != "GET" else None
class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kw):
        return None
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirect)
if host:
    headers["Host"] = host
req = urllib.request.Request(url, data=body, headers=headers, method=method)
deadline = time.monotonic() + wait
started = time.monotonic()
while True:
    try:
        try:
            with opener.open(req, timeout=timeout) as r:
                status, body = r.status, r.read(4000)
        except urllib.error.HTTPError as e:
            status, body = e.code, e.read(4000)
        print(json.dumps({"status": status, "body": body.decode("utf-8", "replace")[:2000],
                          "seconds": round(time.monotonic() - started, 3)}))
        break
    except Exception as exc:
        exc = getattr(exc, "reason", exc)  # URLError wraps the socket error
        timed_out = isinstance(exc, (socket.timeout, TimeoutError))
        error = f"no answer within {timeout:g} s" if timed_out else f"{type(exc).__name__}: {exc}"
        if (timed_out and not wait) or time.monotonic() >= deadline:
            print(json.dumps({"error": error, "timed_out": timed_out,
                              "seconds": round(time.monotonic() - started, 3)}))
            break
        time.sleep(0.1)
