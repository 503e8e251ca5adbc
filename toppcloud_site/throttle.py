"""Login throttling (django-axes): which address a login attempt comes from.

X-Forwarded-For is written by whoever sends the request, so it is believed
only as far as the operator says proxies of their own stand in front
(TOPPCLOUD_PROXY_COUNT): each proxy appends the address it was reached
from, so the client is the N-th entry from the right. With no proxy (the
default, as in docker-compose.yml) the address is the socket's.
"""

from django.conf import settings


def client_ip(request):
    proxies = settings.TOPPCLOUD_PROXY_COUNT
    forwarded = [a.strip() for a in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if a.strip()]
    if proxies and len(forwarded) >= proxies:
        return forwarded[-proxies]
    # No proxy, or a request that did not pass through all of them: the address that reached us.
    return request.META.get("REMOTE_ADDR")
