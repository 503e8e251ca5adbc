import sys, time, urllib.request
url, tries = sys.argv[1], int(sys.argv[2])
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # ignore http_proxy
last = "no attempt"
for attempt in range(tries):
    if attempt:
        time.sleep(0.25)
    try:
        with opener.open(url, timeout=3) as r:
            body = r.read().decode("utf-8", "replace")
            if r.status == 200 and body == "ok\n":
                print("ok")
                sys.exit(0)
            last = f"HTTP {r.status}: {body[:200]!r}"
    except Exception as exc:
        last = f"{type(exc).__name__}: {exc}"
sys.exit(f"GET {url} failed after {tries} attempts: {last}")
