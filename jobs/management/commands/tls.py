"""manage.py tls add|list|remove: TLS certificates of hosts (nginx serves them over HTTPS).

    manage.py tls add shop.example.com --cert fullchain.pem --key privkey.pem
    sops -d key.pem | manage.py tls add '*.example.com' --cert chain.pem --key -    # the key from stdin
    cat fullchain.pem privkey.pem | ssh control manage.py tls add shop.example.com --cert - --key -   # both
    manage.py tls list            # host, valid until, days left, fingerprint (never the key)
    manage.py tls remove shop.example.com

`--cert` is the leaf first, then its intermediates (certbot's fullchain.pem);
the key must be unencrypted. Both are checked (records/tls.py) before
anything is stored: a bad input exits non-zero with the reason and changes
nothing. The key is encrypted at rest and never printed; every change is an
audit entry under the OS user's name (the key masked).
"""

import getpass
import json
import sys

from django.core.exceptions import ValidationError
from django.core.management.base import CommandError

from jobs import actions, cli
from jobs.steps import frontdoor
from jobs.nodes import validation_message
from jobs.engine.states import ActorKind
from toppcloud_site.records import audit, tls
from toppcloud_site.records.models import Certificate


class Command(cli.Command):
    help = "Add (or replace), list and remove the TLS certificates of hosts."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        add = sub.add_parser("add", help="check a certificate chain and key for a host, then store them")
        add.add_argument("host", help="a host name or '*.example.com'")
        add.add_argument("--cert", required=True, metavar="FILE", help="PEM: the certificate, then its "
                         "intermediates ('-': stdin; both '-': one stream holding both)")
        add.add_argument("--key", required=True, metavar="FILE", help="PEM: its private key, unencrypted ('-': stdin)")
        listing = sub.add_parser("list", help="every certificate: host, valid until, days left, fingerprint")
        listing.add_argument("--json", dest="as_json", action="store_true")
        remove = sub.add_parser("remove", help="remove a host's certificate (nginx then serves it over HTTP only)")
        remove.add_argument("host")

    def handle(self, *args, action, **opts):
        with audit.acting_as(f"user:{getpass.getuser()}"):
            return getattr(self, f"do_{action}")(**opts)

    def do_add(self, host, cert, key, **_):
        if cert == "-" and key == "-":  # one stream with both (cat fullchain.pem privkey.pem | ...)
            cert_pem = key_pem = _read("-", "stdin")
        else:
            cert_pem, key_pem = _read(cert, "--cert"), _read(key, "--key")
        try:
            record, created = tls.save_certificate(host, cert_pem, key_pem)
        except ValueError as exc:
            raise CommandError(f"the certificate for {host!r} was not stored: {exc}") from None
        except ValidationError as exc:
            raise CommandError(f"the certificate for {host!r} was not stored: {validation_message(exc)}") from None
        self.stdout.write(f"certificate for {record.host} {'added' if created else 'replaced'}: valid until "
                          f"{record.not_after:%Y-%m-%d %H:%M} UTC ({tls.days_left(record.not_after)} days), "
                          f"SHA-256 {record.fingerprint}")
        self.push(record.host)

    def do_list(self, as_json=False, **_):
        rows = [{"host": c.host, "not_after": c.not_after.isoformat() if c.not_after else None,
                 "days_left": tls.days_left(c.not_after) if c.not_after else None, "fingerprint": c.fingerprint}
                for c in Certificate.objects.order_by("host").only("host", "not_after", "fingerprint")]
        if as_json:
            self.stdout.write(json.dumps(rows, indent=2))
            return
        if not rows:
            self.stdout.write("no certificates (add one with `manage.py tls add HOST --cert FILE --key FILE`)")
            return
        width = max(len(r["host"]) for r in rows)
        self.stdout.write(f"{'HOST':<{width}}  {'VALID UNTIL (UTC)':<17}  {'DAYS':>5}  SHA-256")
        for r in rows:
            until = r["not_after"][:16].replace("T", " ") if r["not_after"] else "-"
            days = r["days_left"] if r["days_left"] is not None else "-"
            self.stdout.write(f"{r['host']:<{width}}  {until:<17}  {days:>5}  {r['fingerprint']}")

    def do_remove(self, host, **_):
        record = Certificate.objects.filter(host=host.lower()).first()
        if record is None:
            known = ", ".join(Certificate.objects.values_list("host", flat=True)[:20]) or "none"
            raise CommandError(f"there is no certificate for host {host!r} (known: {known})")
        record.delete()
        self.stdout.write(f"certificate for {record.host} removed")
        self.push(record.host)

    def push(self, host):
        """Queue a front door job for the nodes serving the host (it runs on its own: no waiting here)."""
        nodes = frontdoor.nodes_serving(host)
        if not nodes:
            self.stdout.write(f"no app with a location on {host} is live on any node: no front door to render")
            return
        job = actions.front_door(nodes, actor_kind=ActorKind.USER, actor=getpass.getuser())
        self.stdout.write(f"job {job.pk} renders the front door of {', '.join(n.name for n in nodes)} "
                          f"(`manage.py jobs follow {job.pk}`)")


def _read(name, option):
    """The file's bytes (at most a byte over the checker's limit, which then refuses it), or stdin for '-'."""
    if name == "-":
        return sys.stdin.read(tls.MAX_PEM_BYTES + 1)
    try:
        with open(name, "rb") as f:
            return f.read(tls.MAX_PEM_BYTES + 1)
    except OSError as exc:
        raise CommandError(f"{option} {name}: cannot read it: {exc.strerror}") from None
