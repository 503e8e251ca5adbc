"""Fixtures for real test hosts; import them into a test module or conftest.

    from tests.nodeops_conftest_snippet import hosts_dir, control_key, test_hosts  # noqa: F401

They are module-scoped so a module that imports them gets its own hosts;
in conftest.py they could become session-scoped (one set for the run).
"""

import os
import shutil
import tempfile

import pytest

from tests.hosts import make_control_key, start_hosts, stop_hosts

N_HOSTS = 2


@pytest.fixture(scope="module")
def hosts_dir():
    # Not tmp_path_factory: pytest's temp dirs are 0700, and nginx workers
    # (www-data) must traverse into a host's root. Short, too, because ssh
    # control sockets live in here (unix socket paths max 108 bytes).
    path = tempfile.mkdtemp(prefix="toppcloud-hosts-", dir="/tmp")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def control_key(hosts_dir):
    """(private key path, public key text) the control plane logs in with."""
    return make_control_key(os.path.join(hosts_dir, "control"))


@pytest.fixture(scope="module")
def control_dir(hosts_dir):
    path = os.path.join(hosts_dir, "cm")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def test_hosts(hosts_dir, control_key):
    hosts = start_hosts(N_HOSTS, hosts_dir, control_key[1])
    yield hosts
    stop_hosts(hosts)


def host_spec(host, control_key, control_dir):
    """The spec dict nodeops.transport.transport_for takes, for a TestHost."""
    return host.spec(control_key[0], control_dir)
