"""Helpers for node-operation tests (plain Python, no database)."""

import urllib.error
import urllib.request

# Straight to the test host, whatever proxy the environment names.
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Events(list):
    """An emit() that keeps what node operations report, for tests to read."""

    def __call__(self, kind, **data):
        self.append((kind, data))

    def kinds(self, kind):
        return [data for k, data in self if k == kind]

    def finished(self):
        return {d["step"]: d for d in self.kinds("step.finished")}


def get(url, host=None):
    """(status, body) of a GET, errors included; `host` sets the Host header."""
    req = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with NO_PROXY.open(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
