"""manage.py ssh_key: create the control plane's SSH key if missing; print its public half."""

import os
import subprocess
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand


def ensure_key(path):
    """Create an ed25519 key at path unless one exists; return the public key text."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "toppcloud-control-plane",
                        "-f", str(path)], check=True)
    return Path(str(path) + ".pub").read_text().strip()


class Command(BaseCommand):
    help = "Create the control plane's SSH key (TOPPCLOUD_SSH_KEY_FILE) if missing and print the public key."

    def handle(self, **opts):
        self.stdout.write(ensure_key(settings.TOPPCLOUD_SSH_KEY_FILE))
