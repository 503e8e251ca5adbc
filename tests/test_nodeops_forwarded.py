"""nodeops.frontdoor's forwarded-header trust, rendered (no hosts, no database): what nginx is told to believe.

The real-host behaviour is tests/test_forwarded_trust.py; here, the text and the refusals.
"""

import pytest

from nodeops import frontdoor
from nodeops.hostside import node_exec
from nodeops.layout import NodeLayout
from tests.test_location_rule import nginx_accepts

ROUTE = frontdoor.Route(app="shop", host="shop.example.com", path="/", port=9001, release="20260101000000-abcdef01")


def render(tmp_path, trusted):
    return frontdoor.render(NodeLayout(str(tmp_path)), [ROUTE], listen="127.0.0.1:8080", trusted_proxies=trusted)


def test_it_believes_forwarded_headers_only_from_the_trusted_addresses_and_nginx_accepts_it(tmp_path):
    text = render(tmp_path, ["10.0.0.9", "10.0.1.0/24", "fd00::5", "10.0.0.9"])
    assert nginx_accepts(tmp_path, text)
    assert text.count("set_real_ip_from") == 3  # one each, sorted, the duplicate once
    assert "set_real_ip_from 10.0.0.9;\nset_real_ip_from 10.0.1.0/24;\nset_real_ip_from fd00::5;\n" in text
    assert "real_ip_header X-Forwarded-For;\n" in text
    assert "    10.0.1.0/24 1;\n" in text and '"1:https" https;' in text
    # The app gets one address (the believed one) and the chosen scheme; other scheme headers are cleared.
    location = text[text.index("location / {"):]
    for line in ("proxy_set_header X-Forwarded-For $remote_addr;", "proxy_set_header X-Real-IP $remote_addr;",
                 "proxy_set_header X-Forwarded-Proto $toppcloud_forwarded_proto;",
                 'proxy_set_header X-Forwarded-Ssl "";', 'proxy_set_header X-Forwarded-Protocol "";',
                 'proxy_set_header X-Forwarded-Host "";', 'proxy_set_header Forwarded "";'):
        assert line in location, line
    assert "$proxy_add_x_forwarded_for" not in text


def test_without_trusted_addresses_nobody_is_believed(tmp_path):
    text = render(tmp_path, [])
    assert nginx_accepts(tmp_path, text)
    assert "set_real_ip_from" not in text and "real_ip_header" not in text
    assert "map $scheme $toppcloud_forwarded_proto {\n    default $scheme;\n}\n" in text


@pytest.mark.parametrize("bad", ["10.0.0.9; include /etc/passwd", "example.com", "10.0.0.1/24", "10.0.0.0/33",
                                 "", "10.0.0.9\n", 10])
def test_it_refuses_a_trusted_proxy_that_is_not_an_address_or_network(tmp_path, bad):
    with pytest.raises(ValueError, match="trusted proxy .* is invalid: an IP address or network"):
        render(tmp_path, [bad])


class Worker:
    def __init__(self, app):
        self.wsgi = app


@pytest.mark.parametrize("peer,real_ip,seen", [
    ("127.0.0.1", "203.0.113.7", "203.0.113.7"),  # from nginx: the address it believes
    ("127.0.0.1", "2001:db8::7", "2001:db8::7"),
    ("127.0.0.1", None, "127.0.0.1"),  # the node's own internal requests (cron, tasks)
    ("127.0.0.1", "not-an-address", "127.0.0.1"),
    ("10.0.0.8", "203.0.113.7", "10.0.0.8"),  # not from nginx: never replaced
])
def test_gunicorn_gives_the_app_the_client_nginx_believes_as_remote_addr(peer, real_ip, seen):
    got = {}
    worker = Worker(lambda environ, start_response: got.update(environ) or [b""])
    node_exec.real_client_address(worker)
    environ = {"REMOTE_ADDR": peer, **({"HTTP_X_REAL_IP": real_ip} if real_ip else {})}
    worker.wsgi(environ, None)
    assert got["REMOTE_ADDR"] == seen
