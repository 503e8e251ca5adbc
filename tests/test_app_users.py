"""Each app runs as its own system user (nodeops/node_users.py): web processes, `run` commands, files
on disk, and a node from before app users moved over by a deploy, on a real test host with a real worker."""

import grp
import os
import pwd
import re
import stat
import subprocess

import pytest

from jobs.models import JobEvent, LiveRelease
from nodeops.layout import NodeLayout
from nodeops.node_users import app_user
from nodeops.release import env_file, program_conf, program_name, release_dir
from jobs import actions
from tests.helpers import wait_for_job, wait_until
from tests.test_data_flow import backup_now, request, run_command
from tests.test_deploy_flow import Load, app_copy, deploy, get
from toppcloud_site.records.models import App

pytestmark = [pytest.mark.hosts, pytest.mark.worker]

SUFFIX = os.getpid() % 100000


def output(job):
    return "".join(e.data["output"] for e in JobEvent.objects.filter(job_id=job.pk, kind="output").order_by("seq"))


def run(app, *argv):
    """`manage.py run APP -- argv...` through the worker; (exit code, its output)."""
    code, job = run_command("run", app, "--", *argv)
    return code, output(job)


def live_release(name):
    return LiveRelease.objects.get(app=App.objects.get(name=name)).release.name


def web_pids(layout, name, release):
    """pids of the release's gunicorn (master and workers), found by the program name in their argv."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if program_name(name, release).encode() in argv and any(a.endswith(b"/gunicorn") for a in argv):
            found.append(int(entry))
    return found


def uid_of(pid):
    with open(f"/proc/{pid}/status") as f:
        return [int(line.split()[1]) for line in f if line.startswith("Uid:")][0]


@pytest.fixture(scope="module")
def apps(tmp_path_factory, ready_nodes, test_hosts):
    """Two apps on the first test host: notes (a files directory and a database) and hello."""
    notes, hello = f"usnotes{SUFFIX}", f"ushello{SUFFIX}"
    for fixture, name in (("notes", notes), ("hello", hello)):
        code, job = deploy(app_copy(tmp_path_factory.mktemp(name), fixture, name=name), ready_nodes[0])
        assert code == 0, job.error
    return notes, hello, NodeLayout(test_hosts[0].root)


def test_it_runs_commands_as_the_apps_own_user(apps):
    notes, hello, layout = apps
    code, said = run(hello, "sh", "-c", "id; echo HOME=$HOME; touch $HOME/was-here")
    user = app_user(hello)
    uid = pwd.getpwnam(user).pw_uid
    assert code == 0, said
    assert said.startswith(f"uid={uid}({user}) gid={pwd.getpwnam(user).pw_gid}({user})"), said
    assert "root" not in said.splitlines()[0]
    assert f"HOME={layout.home_dir(hello)}\n" in said
    assert os.stat(os.path.join(layout.home_dir(hello), "was-here")).st_uid == uid


def test_it_runs_the_web_processes_as_the_apps_own_user(apps):
    notes, hello, layout = apps
    for name in (notes, hello):
        release = live_release(name)
        pids = web_pids(layout, name, release)
        assert len(pids) >= 2, pids  # gunicorn's master and its worker(s)
        assert {uid_of(pid) for pid in pids} == {pwd.getpwnam(app_user(name)).pw_uid}
        assert f"\nuser = {app_user(name)}\n" in open(program_conf(layout, name, release)).read()


def test_it_keeps_other_apps_env_and_files_and_its_own_release_out_of_reach(apps):
    notes, hello, layout = apps
    notes_env = env_file(layout, notes, live_release(notes))
    assert "DATABASE_URL=" in open(notes_env).read()  # there is a secret to steal
    for argv in (["cat", notes_env], ["ls", layout.files_dir(notes)], ["ls", layout.app_dir(notes)],
                 ["touch", os.path.join(release_dir(layout, hello, live_release(hello)), "x")],
                 ["touch", os.path.join(layout.venvs_dir(hello), "x")]):
        code, said = run(hello, *argv)
        assert code != 0 and "Permission denied" in said, (argv, code, said)
    # Its own env file it reads.
    code, said = run(hello, "cat", env_file(layout, hello, live_release(hello)))
    assert code == 0 and "TOPPCLOUD_APP_NAME=" in said, said
    st = os.stat(notes_env)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (pwd.getpwnam(app_user(notes)).pw_uid, 0o600)


def test_it_writes_its_own_files_directory_through_a_web_request(apps, test_hosts):
    notes, hello, layout = apps
    status, body = request(test_hosts[0], f"{notes}.test", "PUT", "/files/owned.txt", b"mine\n")
    assert status == 201, body
    path = os.path.join(layout.files_dir(notes), "owned.txt")
    assert open(path, "rb").read() == b"mine\n"
    assert pwd.getpwuid(os.stat(path).st_uid).pw_name == app_user(notes)
    assert request(test_hosts[0], f"{notes}.test", "GET", "/files/owned.txt") == (200, b"mine\n")


def test_it_gives_restored_files_to_the_apps_user(apps, test_hosts):
    notes, hello, layout = apps
    assert request(test_hosts[0], f"{notes}.test", "PUT", "/files/owned.txt", b"backed up\n")[0] == 201
    source, _ = backup_now(notes)
    code, job = run_command("restore", source.name, notes, "--no-checkpoint")
    assert code == 0, job.error
    user = pwd.getpwnam(app_user(notes))
    owners = {(os.lstat(os.path.join(where, n)).st_uid, os.lstat(os.path.join(where, n)).st_gid)
              for where, dirs, files in os.walk(layout.files_dir(notes)) for n in dirs + files}
    assert owners == {(user.pw_uid, user.pw_gid)}  # unpacked as root, handed to the app before the swap
    assert os.stat(layout.files_dir(notes)).st_uid == user.pw_uid
    status, body = request(test_hosts[0], f"{notes}.test", "PUT", "/files/owned.txt", b"after the restore\n")
    assert status == 201, body


def make_it_old(layout, name, release):
    """The app as a node from before app users has it: no user, root owns everything, its program runs
    as root (no user=, no --user), the directories open as they were."""
    user = app_user(name)
    conf = program_conf(layout, name, release)
    text = open(conf).read()
    old = re.sub(r"^; The app's own system user.*\nuser = .*\n", "", text, flags=re.M).replace(f"--user {user} ", "")
    assert "user" not in old.replace("/usr/", ""), old
    with open(conf, "w") as f:
        f.write(old)
    for top in (layout.app_dir(name), layout.app_logs(name)):
        subprocess.run(["chown", "-R", "root:root", top], check=True)
    for path, mode in ((layout.app_dir(name), 0o755), (layout.env_dir(name), 0o700), (layout.app_logs(name), 0o755)):
        os.chmod(path, mode)
    # supervisord restarts the changed program: as root now.
    subprocess.run(["supervisorctl", "-c", layout.supervisor_conf, "update", program_name(name, release)],
                   check=True, capture_output=True)
    subprocess.run(["gpasswd", "-d", "www-data", user], check=True, capture_output=True)
    subprocess.run(["userdel", user], check=True)  # and its group


def test_it_moves_an_app_from_before_app_users_over_by_setup_node_and_deploy_with_no_failed_request(ready_nodes, test_hosts, tmp_path):
    name, host, node = f"usold{SUFFIX}", test_hosts[0], ready_nodes[0]
    layout = NodeLayout(host.root)
    code, job = deploy(app_copy(tmp_path, "hello", name=name, version="1"), node)
    assert code == 0, job.error
    v1 = live_release(name)
    make_it_old(layout, name, v1)
    with pytest.raises(KeyError):
        pwd.getpwnam(app_user(name))
    wait_until(lambda: get(host, f"{name}.test")[0] == 200, timeout=30, what="the old program serving again")
    assert {uid_of(pid) for pid in web_pids(layout, name, v1)} == {0}  # as root, as before app users

    with Load([host], f"{name}.test") as load, Load([host], f"{name}.test", path="/static/style.css",
                                                    expect="") as static:
        # setup_node makes the user and moves the files over; the running program stays as it is.
        setup = wait_for_job(actions.setup_node(node, actor_kind="system", actor="tests").pk,
                             timeout=120)
        assert setup.status == "succeeded", setup.error
        user = pwd.getpwnam(app_user(name))
        assert os.stat(env_file(layout, name, v1)).st_uid == user.pw_uid
        [users_step] = [e.data for e in JobEvent.objects.filter(job_id=setup.pk, kind="step.finished")
                        if e.data["step"] == "app users"]
        assert program_name(name, v1) in users_step["still_root"] and users_step["changed"] is True
        code, said = run(name, "id", "-un")  # commands run as the user at once
        assert (code, said) == (0, app_user(name) + "\n")
        # The next deploy moves the web processes: new ones as the user beside the old, then the old drained.
        code, job = deploy(app_copy(tmp_path, "hello", name=name, version="2"), node)
    assert code == 0, job.error
    assert load.failures == [] and static.failures == [], (load.failures[:5], static.failures[:5])
    assert load.ok > 20 and static.ok > 20, (load.ok, static.ok)
    print(f"requests during setup_node and the deploy: {load.ok} pages, {static.ok} static files, 0 failed")
    v2 = live_release(name)
    assert v2 != v1 and not web_pids(layout, name, v1)
    assert {uid_of(pid) for pid in web_pids(layout, name, v2)} == {user.pw_uid}
    assert user.pw_gecos == f"toppcloud app {name}" and user.pw_shell == "/usr/sbin/nologin"
    app_dir = os.stat(layout.app_dir(name))
    assert (app_dir.st_uid, app_dir.st_gid, stat.S_IMODE(app_dir.st_mode)) == (0, user.pw_gid, 0o750)
    assert "www-data" in grp.getgrgid(user.pw_gid).gr_mem  # nginx still serves its static files
    assert os.stat(os.path.join(layout.app_logs(name), "access.log")).st_uid == user.pw_uid
