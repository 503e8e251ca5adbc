"""Rolling deploys and rollbacks through a group's balancer (issue 16 point 3).

parse_batch and the strict batches of the fan-out are tested without hosts
(the batches with a real worker). The rolling tests run 1 lb + 3 app nodes
(real sshd, nginx, supervisord, HAProxy), a real worker, and 8 client
threads GETting through the balancer the whole time; they assert on the
bytes each node and the balancer serve, the job's event rows and HAProxy's
own view of its servers.
"""

import http.client
import io
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.utils import timezone

from jobs.engine import dispatch
from jobs.management.commands.ssh_key import ensure_key
from jobs.models import Job, LiveRelease
from jobs.steps.rolling import BatchRefused, batch_sizes, parse_batch
from nodeops import balancer
from nodeops.layout import NodeLayout
from nodeops.transport import transport_for
from tests.helpers import wait_for_job, wait_until
from tests.hosts import start_hosts, stop_hosts
from tests.load import LoadThreads
from toppcloud_site.records.models import App, Node, ServerGroup

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "apps"


# parse_batch: how many nodes a batch holds

@pytest.mark.parametrize("text, n, size", [
    ("1", 3, 1), ("2", 3, 2), ("25%", 4, 1), ("50%", 4, 2), ("75%", 4, 3), ("25%", 3, 1), ("66%", 3, 1),
    ("67%", 3, 2), ("99%", 3, 2), ("99%", 200, 198), ("10%", 3, 1), (" 1 ", 5, 1), ("100%", 1, 1), ("1", 1, 1), ("5", 10, 5),
])
def test_it_parses_a_batch_as_nodes_or_a_percentage_rounded_down_at_least_one(text, n, size):
    assert parse_batch(text, n) == size


@pytest.mark.parametrize("text, n, message", [
    ("0", 3, "--batch 0: a batch must hold at least 1 node"),
    ("-1", 3, "--batch -1: a batch must hold at least 1 node"),
    ("x", 3, "--batch 'x' is not a number of nodes (1, 2, ...) or a percentage of them (25%)"),
    ("", 3, "--batch '' is not a number of nodes"),
    ("1.5", 3, "--batch '1.5' is not a number of nodes"),
    ("25 %", 3, "--batch '25 %' is not a number of nodes"),
    ("150%", 3, "--batch 150%: a percentage must be from 1% to 100%"),
    ("0%", 3, "--batch 0%: a percentage must be from 1% to 100%"),
    ("-5%", 3, "--batch -5%: a percentage must be from 1% to 100%"),
    ("3", 3, "--batch 3 would take all 3 app nodes out of rotation at once, leaving the balancer none to send "
             "requests to; at most --batch 2 (or a percentage under 100%)"),
    ("100%", 3, "--batch 100% would take all 3 app nodes out of rotation at once"),
    ("7", 2, "--batch 7 would take all 2 app nodes out of rotation at once"),
])
def test_it_refuses_a_batch_that_is_no_size_or_drains_every_node(text, n, message):
    with pytest.raises(BatchRefused) as info:
        parse_batch(text, n)
    assert str(info.value).startswith(message)


def test_batches_are_consecutive_slices_the_last_one_smaller():
    assert batch_sizes(3, 1) == [1, 1, 1]
    assert batch_sizes(3, 2) == [2, 1]
    assert batch_sizes(4, 2) == [2, 2]
    assert batch_sizes(1, 1) == [1]


# Strict batches in the fan-out, with a real worker (noop children: one that fails stops the rest)

def _rollout_of_noops(name, children, batches):
    App.objects.get_or_create(name=name)
    plan = [{"kind": "noop", "target": f"noop:{name}:{i}", "params": p} for i, p in enumerate(children)]
    return dispatch.submit("rolling", target=f"app:{name}@noops", actor_kind="user", actor="tester",
                           params={"app": name, "action": "deploy", "children": plan, "batches": batches})


@pytest.mark.worker
def test_a_batch_starts_only_when_every_child_of_the_one_before_succeeded(worker):
    name = f"batches{os.getpid() % 10000}"
    parent = _rollout_of_noops(name, [{"seconds": 0.5}, {"seconds": 0.2}, {"mark": True}], [2, 1])
    parent = wait_for_job(parent.pk, timeout=60)
    assert parent.status == "succeeded", parent.error
    assert parent.summary == "3 of 3 child jobs succeeded"
    children = {c.target: c for c in Job.objects.filter(parent=parent)}
    first, second, third = (children[f"noop:{name}:{i}"] for i in range(3))
    assert third.started_at >= max(first.finished_at, second.finished_at)
    assert abs((first.started_at - second.started_at).total_seconds()) < 0.45  # batch 1: both at once
    batches = [e.data for e in parent.events.filter(kind="batch.started").order_by("seq")]
    assert batches == [{"batch": 1, "of": 2, "targets": [f"noop:{name}:0", f"noop:{name}:1"]},
                       {"batch": 2, "of": 2, "targets": [f"noop:{name}:2"]}]


@pytest.mark.worker
def test_the_first_failed_child_stops_the_rollout_and_the_rest_never_start(worker):
    name = f"stops{os.getpid() % 10000}"
    parent = _rollout_of_noops(name, [{}, {"seconds": "not a number"}, {}, {}], [1, 1, 1, 1])
    parent = wait_for_job(parent.pk, timeout=60)
    assert parent.status == "failed"
    children = list(Job.objects.filter(parent=parent))
    assert sorted((c.target, c.status) for c in children) == [(f"noop:{name}:0", "succeeded"),
                                                               (f"noop:{name}:1", "failed")]
    assert parent.error.startswith(f"1 of 2 child jobs succeeded; not started: noop:{name}:2, noop:{name}:3. "
                                   f"noop:{name}:1: failed: ValueError")
    stopped = parent.events.get(kind="rollout.stopped").data
    assert stopped == {"failed": [f"noop:{name}:1"], "not_started": [f"noop:{name}:2", f"noop:{name}:3"]}
    time.sleep(1)  # nothing starts them later either
    assert Job.objects.filter(parent=parent).count() == 2


# Refusals of the commands (no hosts needed)

@pytest.mark.django_db
def test_batch_is_refused_without_an_lb_node_or_without_a_group(tmp_path):
    name = f"nolb{os.getpid()}"
    group = ServerGroup.objects.create(name=name)
    Node.objects.create(name=f"{name}-a", address="127.0.0.250", root="/srv/toppcloud", group=group)
    app_dir = app_version(tmp_path, name, "1")
    with pytest.raises(CommandError, match=f"nothing was deployed: server group {name} has no lb node: --batch rolls "
                                           "a group through its balancer; without one, say how many nodes at once "
                                           "with --max-parallel"):
        call_command("deploy", str(app_dir), "--group", name, "--batch", "1")
    with pytest.raises(CommandError, match="--batch rolls a server group through its balancer: say which with "
                                           "--group"):
        call_command("deploy", str(app_dir), "--node", f"{name}-a", "--batch", "1")
    App.objects.create(name=name)
    with pytest.raises(CommandError, match="say where: --node NODE or --group GROUP"):
        call_command("rollback", name)
    with pytest.raises(CommandError, match=f"nothing was rolled back: server group {name} has no lb node"):
        call_command("rollback", name, "--group", name, "--batch", "1")
    Node.objects.create(name=f"{name}-lb", address="127.0.0.251", root="/srv/toppcloud", group=group,
                        role=Node.Role.LB)
    with pytest.raises(CommandError, match="nothing was deployed: --batch 150%: a percentage must be from 1% to "
                                           "100%"):
        call_command("deploy", str(app_dir), "--group", name, "--batch", "150%")
    with pytest.raises(CommandError, match=f"nothing was deployed: server group {name} has an lb node: a deploy to "
                                           "it rolls through its app nodes; give --group without --node"):
        call_command("deploy", str(app_dir), "--group", name, "--node", f"{name}-a")
    with pytest.raises(CommandError, match=f"nothing was rolled back: {name}-lb, the lb node of server group {name}, "
                                           f"is not set up yet: manage.py setup_node {name}-lb first"):
        call_command("rollback", name, "--group", name)
    Node.objects.filter(name=f"{name}-lb").update(set_up_at=timezone.now())
    with pytest.raises(CommandError, match=f"nothing was rolled back: node '{name}-lb' is not valid, no job was "
                                           "started: host_key"):  # each node is checked before any job exists
        call_command("rollback", name, "--group", name)
    assert not Job.objects.filter(kind="rolling").exists()


# Real hosts: 1 lb + 3 app nodes

@pytest.fixture(scope="module")
def group_nodes(worker, live_db):
    """A server group on 4 real hosts: an lb node (HAProxy) and 3 app nodes, set up by setup_node jobs."""
    from jobs import actions

    base = tempfile.mkdtemp(prefix="tc-roll-", dir="/tmp")
    os.chmod(base, 0o755)
    hosts = start_hosts(4, base, ensure_key(settings.TOPPCLOUD_SSH_KEY_FILE), ssh_port=2322, http_port=8180)
    try:
        group = ServerGroup.objects.create(name=f"roll{os.getpid()}")
        nodes = []
        for i, host in enumerate(hosts):
            node = Node(name=f"roll{os.getpid()}-{'lb' if i == 0 else f'app{i}'}", address=host.address,
                        ssh_port=host.ssh_port, ssh_user=host.ssh_user, root=host.root, http_port=host.http_port,
                        https_port=host.https_port, host_key=host.host_key, group=group,
                        role=Node.Role.LB if i == 0 else Node.Role.APP)
            node.full_clean()
            node.save()
            nodes.append(node)
        for node in [*nodes[1:], nodes[0]]:  # the lb last: its setup renders the app nodes' front doors
            job = wait_for_job(actions.setup_node(node, actor_kind="system", actor="tests").pk, timeout=180)
            assert job.status == "succeeded", job.error
        yield group, hosts, nodes
    finally:
        stop_hosts(hosts)
        shutil.rmtree(base, ignore_errors=True)


def app_version(tmp_path, name, version, *, broken_on=None, behind_front_door=False):
    """hello renamed, serving `version`; broken_on: a node name where its /health answers 500 (it reads
    TOPPCLOUD_NODE, the node the release runs on, from its environment); behind_front_door: only when asked
    through the node's nginx (X-Real-IP set), not on its own port as test-before-activate asks it."""
    dest = tmp_path / f"{name}-{version}"
    shutil.copytree(FIXTURES / "hello", dest)
    ini = (dest / "app.ini").read_text()
    (dest / "app.ini").write_text(ini.replace("app_name = hello", f"app_name = {name}")
                                  .replace("default_location = hello.test", f"default_location = {name}.test"))
    (dest / "VERSION").write_text(version + "\n")
    if broken_on:
        code = (dest / "app.py").read_text()
        old = '    if path == "/health":\n'
        assert old in code
        (dest / "app.py").write_text(code.replace(old, (
            '    if path == "/health" and os.environ.get("TOPPCLOUD_NODE") == ' + repr(broken_on)
            + (' and "HTTP_X_REAL_IP" in environ' if behind_front_door else '') + ':\n'
            '        start_response("500 Internal Server Error", [("Content-Type", "text/plain")])\n'
            '        return [b"broken on this node"]\n' + old)))
    return dest


def get(address, port, hostname, path="/"):
    """(status, the node that answered (X-Toppcloud-Node), body)."""
    conn = http.client.HTTPConnection(address, port, timeout=5)
    try:
        conn.request("GET", path, headers={"Host": hostname})
        response = conn.getresponse()
        return response.status, response.getheader("X-Toppcloud-Node"), response.read().decode()
    finally:
        conn.close()


def version_of(body):
    return body.split("hello version ", 1)[1].split("<", 1)[0] if "hello version " in body else None


class Load(LoadThreads):
    """8 threads GETting / through the balancer until stopped: every failure counted, and which version
    each node served."""

    def __init__(self, lb, hostname, threads=8):
        self.lb, self.hostname = lb, hostname
        self.ok, self.failures, self.served = 0, [], {}
        self.answers = []  # (started, ended, node) of each answer, in epoch seconds
        super().__init__([()] * threads)

    def _loop(self):
        deadline = time.monotonic() + 300
        while not self.stop.is_set() and time.monotonic() < deadline:
            started = time.time()
            try:
                status, node, body = get(self.lb.address, self.lb.http_port, self.hostname)
                version = version_of(body)
                failed = None if status == 200 and version else f"{status} {body[:80]!r}"
            except OSError as exc:
                failed, node, version = f"{type(exc).__name__}: {exc}", None, None
            with self.lock:
                if failed:
                    self.failures.append(failed)
                else:
                    self.ok += 1
                    self.served.setdefault(node, set()).add(version)
                    self.answers.append((started, time.time(), node))
            time.sleep(0.005)



def command(name, *args):
    """Run a management command; (exit code, the rolling job it queued)."""
    before = timezone.now()
    with pytest.raises(SystemExit) as exit_info:
        call_command(name, *args, stdout=io.StringIO())
    return exit_info.value.code, Job.objects.filter(queued_at__gt=before, kind="rolling").order_by("queued_at").last()


def lb_view(lb, backend):
    """{server: (state, admin)} of the backend, as HAProxy's runtime API says."""
    t = transport_for(lb.transport_spec(identity_file=settings.TOPPCLOUD_SSH_KEY_FILE,
                                        control_dir=settings.TOPPCLOUD_SSH_CONTROL_DIR))
    return {row["server"]: (row["state"], row["admin"]) for row in balancer.server_states(t, NodeLayout(lb.root))
            if row["backend"] == backend}


def served_through_lb(lb, hostname, want):
    """Wait until the balancer serves {node name: version} as `want`, for every node in it."""
    def all_seen():
        seen = {}
        for _ in range(30):
            status, node, body = get(lb.address, lb.http_port, hostname)
            if status == 200:
                seen[node] = version_of(body)
        return seen == want and seen
    return wait_until(all_seen, timeout=30, what=f"the balancer to serve {want}")


def children_in_order(parent):
    return sorted(Job.objects.filter(parent=parent), key=lambda c: c.started_at)


def event(job, kind):
    rows = list(job.events.filter(kind=kind).order_by("seq"))
    assert len(rows) == 1, (job.target, kind, [(e.kind, e.data) for e in job.events.order_by("seq")])
    return rows[0]


def assert_rolled_in_batches(parent, batches, load):
    """batches: the node names of each batch, in order. Each child: drained, deployed (release.activated),
    checked directly, enabled, in that order; the nodes of a batch out of rotation together, each batch's
    drains after every enable of the batch before; no request that started after a node's drain and ended
    before it went back in rotation was answered by that node (while the others answered)."""
    children = {c.params["node"]: c for c in Job.objects.filter(parent=parent)}
    assert sorted(children) == sorted(n for batch in batches for n in batch)
    assert all(c.status == "succeeded" for c in children.values()), [(c.target, c.error) for c in children.values()]
    started = [e.data["targets"] for e in parent.events.filter(kind="batch.started").order_by("seq")]
    assert started == [[children[n].target for n in batch] for batch in batches]
    before = None  # the last enable of the batch before
    for batch in batches:
        drains, enables = [], []
        for name in batch:
            child = children[name]
            drain, activated = event(child, "balancer.drain"), event(child, "release.activated")
            direct, enable = event(child, "health.direct"), event(child, "balancer.enable")
            assert drain.seq < activated.seq < direct.seq < enable.seq
            assert direct.data["status"] == 200
            assert drain.data["server"] == enable.data["server"] == name
            back = child.events.get(kind="step.started", data__step="back in rotation").at.timestamp()
            meanwhile = [node for started, ended, node in load.answers
                         if started > drain.at.timestamp() and ended < back]
            assert len(meanwhile) > 20 and name not in meanwhile, (child.target, len(meanwhile))
            drains.append(drain.at)
            enables.append(enable.at)
        if before is not None:
            assert min(drains) > before
        assert max(drains) < min(enables)  # the whole batch was out of rotation at once
        before = max(enables)
    return list(children.values())


@pytest.mark.hosts
@pytest.mark.worker
@pytest.mark.groups
def test_a_rolling_deploy_and_rollback_through_the_balancer_fail_no_request(group_nodes, tmp_path, capsys):
    group, hosts, nodes = group_nodes
    lb, app_nodes = nodes[0], nodes[1:]
    name = f"roll{os.getpid() % 10000}"
    hostname, backend = f"{name}.test", f"app_{name}"
    v1, v2, v3 = (app_version(tmp_path, name, v) for v in ("1", "2", "3"))

    code, first = command("deploy", str(v1), "--group", group.name)  # first deploy: nobody to drain yet
    assert code == 0, first.error
    skipped = [e.data.get("skipped", "") for c in Job.objects.filter(parent=first)
               for e in c.events.filter(kind="step.finished", data__step="out of rotation")]
    assert len(skipped) == 3 and all("is not in" in why and "first deploy" in why for why in skipped), skipped
    served_through_lb(lb, hostname, {n.name: "1" for n in app_nodes})

    with Load(lb, hostname) as load:
        started = time.monotonic()
        code, parent = command("deploy", str(v2), "--group", group.name, "--batch", "1")
        rolling_seconds = time.monotonic() - started
        assert code == 0, parent.error
        served_through_lb(lb, hostname, {n.name: "2" for n in app_nodes})
        started = time.monotonic()
        code, back = command("rollback", name, "--group", group.name, "--batch", "67%")  # 2 of 3, then 1
        rollback_seconds = time.monotonic() - started
        assert code == 0, back.error
        served_through_lb(lb, hostname, {n.name: "1" for n in app_nodes})
    assert load.failures == [] and load.ok > 200, (load.ok, load.failures[:5])
    assert load.served == {n.name: {"1", "2"} for n in app_nodes}

    assert parent.status == "succeeded" and parent.summary == "3 of 3 child jobs succeeded"
    assert [e.data["batch"] for e in parent.events.filter(kind="batch.started").order_by("seq")] == [1, 2, 3]
    names = [n.name for n in app_nodes]
    assert_rolled_in_batches(parent, [[n] for n in names], load)
    children = assert_rolled_in_batches(back, [names[:2], names[2:]], load)
    assert {c.kind for c in children} == {"rollback"}
    release1 = LiveRelease.objects.get(app__name=name, node=app_nodes[0]).release.name
    assert all(c.params["release"] == release1 for c in children)
    assert lb_view(lb, backend) == {n.name: ("UP", "ready") for n in app_nodes}
    for host in hosts[1:]:
        assert version_of(get(host.address, host.http_port, hostname)[2]) == "1"

    # The figure for bench/group.py: the same 3 nodes deployed one by one, single-node deploys (not drained),
    # under the same load.
    with Load(lb, hostname) as single_load:
        started = time.monotonic()
        for node in app_nodes:
            with pytest.raises(SystemExit) as exit_info:
                call_command("deploy", str(v3), "--node", node.name, stdout=io.StringIO())
            assert exit_info.value.code == 0
        single_seconds = time.monotonic() - started
    child = children_in_order(parent)[1]
    steps = sorted(((e.data["seconds"], e.data["step"]) for e in child.events.filter(kind="step.finished")),
                   reverse=True)
    waits = [(c.started_at - p.finished_at).total_seconds()
             for p, c in zip(children_in_order(parent), children_in_order(parent)[1:])]
    t0 = back.started_at
    rollback_children = [(c.params["node"][-4:], round((c.started_at - t0).total_seconds(), 1),
                          round((c.finished_at - c.started_at).total_seconds(), 1))
                         for c in children_in_order(back)]
    with capsys.disabled():
        print(f"\nrolling deploy of 3 nodes (batch 1): {rolling_seconds:.1f}s; 3 single-node deploys: "
              f"{single_seconds:.1f}s; ratio {rolling_seconds / single_seconds:.2f}; requests {load.ok} ok, "
              f"{len(load.failures)} failed; rolling rollback (batches 2 + 1): {rollback_seconds:.1f}s (single-node deploys: {single_load.ok} ok, {len(single_load.failures)} "
              f"failed); child 2 {(child.finished_at - child.started_at).total_seconds():.1f}s, "
              f"its slowest steps {steps[:6]}; between batches {[round(w, 2) for w in waits]}s; rollback children (node, start, seconds) "
              f"{rollback_children}")


@pytest.mark.hosts
@pytest.mark.worker
@pytest.mark.groups
def test_a_release_failing_its_health_check_on_the_second_node_stops_the_rollout(group_nodes, tmp_path):
    group, hosts, nodes = group_nodes
    lb, app_nodes = nodes[0], nodes[1:]
    name = f"half{os.getpid() % 10000}"
    hostname, backend = f"{name}.test", f"app_{name}"
    v1 = app_version(tmp_path, name, "1")
    bad = app_version(tmp_path, name, "2", broken_on=app_nodes[1].name)
    assert command("deploy", str(v1), "--group", group.name)[0] == 0
    served_through_lb(lb, hostname, {n.name: "1" for n in app_nodes})

    with Load(lb, hostname) as load:
        code, parent = command("deploy", str(bad), "--group", group.name, "--batch", "1")
        assert code != 0
        time.sleep(2)  # the balancer keeps serving after the rollout stopped
    assert load.failures == [] and load.ok > 100, (load.ok, load.failures[:5])

    parent.refresh_from_db()
    third = f"app:{name}@{app_nodes[2].name}"
    assert parent.status == "failed"
    assert parent.error.startswith(f"1 of 2 child jobs succeeded; not started: {third}. ")
    assert parent.events.get(kind="rollout.stopped").data == {"failed": [f"app:{name}@{app_nodes[1].name}"],
                                                              "not_started": [third]}
    first, second = children_in_order(parent)
    assert (first.status, second.status) == ("succeeded", "failed")
    assert "health check /health of" in second.error and "answered 500" in second.error
    assert not second.events.filter(kind="release.activated").exists()
    assert event(second, "balancer.drain").seq < event(second, "balancer.enable").seq
    assert "the change failed" in event(second, "balancer.enable").data["reason"]  # v1 still live there: back in

    # Node 1 serves v2, nodes 2 and 3 v1: at their own front doors and through the balancer.
    assert [version_of(get(h.address, h.http_port, hostname)[2]) for h in hosts[1:]] == ["2", "1", "1"]
    served_through_lb(lb, hostname, {app_nodes[0].name: "2", app_nodes[1].name: "1", app_nodes[2].name: "1"})
    assert load.served[app_nodes[2].name] == {"1"} and load.served[app_nodes[1].name] == {"1"}
    assert lb_view(lb, backend) == {n.name: ("UP", "ready") for n in app_nodes}

    # Rolled back the same way: only node 1 (the others are on v1 already), and nothing fails meanwhile.
    with Load(lb, hostname) as load:
        code, back = command("rollback", name, "--group", group.name)
        assert code == 0, back.error
    assert load.failures == [] and load.ok > 50, (load.ok, load.failures[:5])
    assert [c["target"] for c in back.params["children"]] == [f"app:{name}@{app_nodes[0].name}"]
    assert_rolled_in_batches(back, [[app_nodes[0].name]], load)
    served_through_lb(lb, hostname, {n.name: "1" for n in app_nodes})


@pytest.mark.hosts
@pytest.mark.worker
@pytest.mark.groups
def test_a_release_failing_the_direct_check_on_the_second_node_leaves_it_drained(group_nodes, tmp_path):
    group, hosts, nodes = group_nodes
    lb, app_nodes = nodes[0], nodes[1:]
    name = f"behind{os.getpid() % 10000}"
    hostname, backend = f"{name}.test", f"app_{name}"
    v1 = app_version(tmp_path, name, "1")
    bad = app_version(tmp_path, name, "2", broken_on=app_nodes[1].name, behind_front_door=True)
    assert command("deploy", str(v1), "--group", group.name)[0] == 0
    served_through_lb(lb, hostname, {n.name: "1" for n in app_nodes})

    with Load(lb, hostname) as load:
        code, parent = command("deploy", str(bad), "--group", group.name, "--batch", "1")
        assert code != 0
        time.sleep(2)
    assert load.failures == [] and load.ok > 100, (load.ok, load.failures[:5])

    parent.refresh_from_db()
    assert parent.status == "failed"
    assert parent.error.startswith(f"1 of 2 child jobs succeeded; not started: app:{name}@{app_nodes[2].name}. ")
    first, second = children_in_order(parent)
    assert (first.status, second.status) == ("succeeded", "failed")
    assert second.error.startswith(f"direct health check of {app_nodes[1].name} failed: ")
    assert "answered 500" in second.error and second.error.endswith(f"it is left drained in {backend} on {lb.name}")
    activated, left = event(second, "release.activated"), event(second, "balancer.left_drained")
    assert event(second, "balancer.drain").seq < activated.seq < left.seq  # it went live, failed, stays out
    assert left.data["reason"].startswith("the direct health check failed: ")
    assert not second.events.filter(kind="balancer.enable").exists()
    assert lb_view(lb, backend)[app_nodes[1].name][1] == "drain"
    assert lb_view(lb, backend)[app_nodes[0].name] == lb_view(lb, backend)[app_nodes[2].name] == ("UP", "ready")
    # Node 2 serves the new release at its own front door, but the balancer sends it nothing.
    assert [version_of(get(h.address, h.http_port, hostname)[2]) for h in hosts[1:]] == ["2", "2", "1"]
    served_through_lb(lb, hostname, {app_nodes[0].name: "2", app_nodes[2].name: "1"})


@pytest.mark.hosts
@pytest.mark.worker
@pytest.mark.groups
def test_the_only_node_serving_an_app_is_not_drained_and_a_node_left_drained_comes_back(group_nodes, tmp_path):
    group, hosts, nodes = group_nodes
    lb, app_nodes = nodes[0], nodes[1:]
    name = f"only{os.getpid() % 10000}"
    hostname, backend = f"{name}.test", f"app_{name}"
    v1, v2 = (app_version(tmp_path, name, v) for v in ("1", "2"))
    with pytest.raises(SystemExit) as exit_info:  # live on the first app node alone
        call_command("deploy", str(v1), "--node", app_nodes[0].name, stdout=io.StringIO())
    assert exit_info.value.code == 0
    served_through_lb(lb, hostname, {app_nodes[0].name: "1"})

    with Load(lb, hostname) as load:
        code, parent = command("deploy", str(v2), "--group", group.name)
        assert code == 0, parent.error
    assert load.failures == [] and load.ok > 50, (load.ok, load.failures[:5])
    first = children_in_order(parent)[0]
    assert first.params["node"] == app_nodes[0].name
    kept = event(first, "balancer.not_drained")
    assert kept.data["reason"].startswith(f"no other server of {backend} on {lb.name} is UP and ready")
    assert not first.events.filter(kind="balancer.drain").exists()
    served_through_lb(lb, hostname, {n.name: "2" for n in app_nodes})

    # A node left drained (its child died after activation): deploying the same release puts it back.
    t = transport_for(lb.transport_spec(identity_file=settings.TOPPCLOUD_SSH_KEY_FILE,
                                        control_dir=settings.TOPPCLOUD_SSH_CONTROL_DIR))
    balancer.set_server_state(t, lambda kind, **data: None, NodeLayout(lb.root), backend, app_nodes[1].name, "drain")
    assert lb_view(lb, backend)[app_nodes[1].name][1] == "drain"
    code, again = command("deploy", str(v2), "--group", group.name)
    assert code == 0, again.error
    child = next(c for c in children_in_order(again) if c.params["node"] == app_nodes[1].name)
    assert "already live" in child.summary and event(child, "balancer.enable").data["server"] == app_nodes[1].name
    assert lb_view(lb, backend) == {n.name: ("UP", "ready") for n in app_nodes}

    # And by hand: manage.py balancer GROUP --enable NODE, after a direct check.
    balancer.set_server_state(t, lambda kind, **data: None, NodeLayout(lb.root), backend, app_nodes[2].name, "maint")
    out = io.StringIO()
    call_command("balancer", group.name, "--enable", app_nodes[2].name, stdout=out)
    assert f"{backend}: {app_nodes[2].name} back in rotation (" in out.getvalue() and "answered 200" in out.getvalue()
    wait_until(lambda: lb_view(lb, backend)[app_nodes[2].name] == ("UP", "ready"), timeout=10,
               what="the enabled server UP")


@pytest.mark.django_db
def test_the_admins_group_upload_rolls_a_group_with_an_lb_node_through_it(admin_client,
                                                                          django_capture_on_commit_callbacks):
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.urls import reverse

    from tests.test_dashboard import hello_files, tar_gz

    group = ServerGroup.objects.create(name="rolled-upload")
    made = {role: [Node.objects.create(name=f"rolled-{role}{i}", transport="local", address="127.0.0.1",
                                       http_port=18300 + 10 * len(role) + i, root=f"/srv/rolled-{role}{i}",
                                       group=group, role=role, set_up_at=timezone.now())
                   for i in range(count)] for role, count in (("app", 2), ("lb", 1))}
    with django_capture_on_commit_callbacks(execute=False):
        response = admin_client.post(reverse("admin:records_app_upload"), {
            "archive": SimpleUploadedFile("hello.tar.gz", tar_gz(hello_files())), "group": group.pk,
            "max_parallel": 4})
    job = Job.objects.get(kind="rolling")
    assert response.status_code == 302 and response["Location"] == reverse("admin:jobs_job_change", args=[job.pk])
    assert job.target == "app:hello@group:rolled-upload" and job.params["batches"] == [1, 1]
    assert job.params["lb"] == "rolled-lb0" and job.actor == "admin"
    assert [(c["kind"], c["target"], c["params"]["lb"]) for c in job.params["children"]] == [
        ("deploy", f"app:hello@{n.name}", "rolled-lb0") for n in made["app"]]  # never the lb node itself
