"""nodeops/node_users.py: the app-user naming rule, and making the user and its directories on this
machine (as root, through a LocalTransport, on a temporary node root; no nginx, no database)."""

import grp
import os
import pwd
import shutil
import stat
import subprocess
import tempfile

import pytest

from nodeops.layout import NodeLayout
from nodeops.node_users import UserError, app_user, ensure_app_user
from nodeops.transport import LocalTransport
from tests.nodeops_helpers import Events


def test_it_names_users_from_app_names_within_32_characters_without_collisions():
    assert app_user("blog") == "tc-blog"
    assert app_user("a" * 29) == "tc-" + "a" * 29
    long_names = ["a" * 30, "a" * 63, "a" * 62 + "b", "abcdefghijkl-x" * 3]
    names = [app_user(n) for n in long_names]
    assert all(len(n) == 32 and n.startswith("tc_") for n in names)
    assert len(set(names)) == len(names)
    # The hashed form has '_', which no app name (and so no short form) has.
    assert all("_" not in app_user(n) for n in ("a" * 29, "x-1", "z"))
    for bad in ("", "Blog", "1app", "a_b", "a" * 64, "a/b", None):
        with pytest.raises(ValueError):
            app_user(bad)


@pytest.fixture
def node():
    """A temporary node root with one app on it laid out the old way (everything root's, open)."""
    base = tempfile.mkdtemp(prefix="tc-users-", dir="/tmp")
    os.chmod(base, 0o755)
    layout = NodeLayout(base + "/root")
    app = f"userstest{os.getpid() % 100000}"
    for d in (layout.releases_dir(app) + "/r1", layout.files_dir(app) + "/sub", layout.env_dir(app),
              layout.writable_dir(app) + "/uploads", layout.app_logs(app)):
        os.makedirs(d)
    with open(layout.env_dir(app) + "/r1.env", "w") as f:
        f.write("SECRET='x'\n")
    with open(layout.files_dir(app) + "/sub/report.txt", "w") as f:
        f.write("numbers\n")
    outside = base + "/outside.txt"  # root's, outside the app: must stay root's
    with open(outside, "w") as f:
        f.write("root's\n")
    os.symlink(outside, layout.files_dir(app) + "/link")
    yield LocalTransport(), layout, app, outside
    subprocess.run(["userdel", app_user(app)], capture_output=True)
    shutil.rmtree(base)


@pytest.mark.skipif(os.geteuid() != 0, reason="making users needs root")
def test_it_makes_the_user_and_gives_each_directory_its_owner_once(node):
    t, layout, app, outside = node
    events = Events()
    result = ensure_app_user(t, events, layout, app)
    user = pwd.getpwnam(app_user(app))
    assert result["user"] == user.pw_name and result["changed"]
    assert (user.pw_gecos, user.pw_shell, user.pw_dir) == (f"toppcloud app {app}", "/usr/sbin/nologin",
                                                          layout.home_dir(app))
    assert user.pw_uid < 1000 and grp.getgrgid(user.pw_gid).gr_name == user.pw_name  # --system, own group

    def owner(path):
        st = os.lstat(path)
        return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)

    me = (user.pw_uid, user.pw_gid)
    assert owner(layout.app_dir(app)) == (0, user.pw_gid, 0o750)
    assert owner(layout.home_dir(app)) == (*me, 0o700)
    assert owner(layout.env_dir(app)) == (0, user.pw_gid, 0o750)
    assert owner(layout.env_dir(app) + "/r1.env") == (*me, 0o600)
    assert owner(layout.app_logs(app)) == (0, user.pw_gid, 0o750)
    assert owner(layout.app_logs(app) + "/access.log") == (*me, 0o640)
    for path in (layout.files_dir(app), layout.files_dir(app) + "/sub/report.txt", layout.writable_dir(app) + "/uploads",
                 layout.files_dir(app) + "/link"):
        assert owner(path)[:2] == me, path
    assert owner(outside)[:2] == (0, 0)  # the symlink was not followed
    assert owner(layout.releases_dir(app) + "/r1")[:2] == (0, 0)
    # The command is named by what it does, not by its source.
    assert [c["argv"][0] for c in events.kinds("command")] == ["node_users"]

    again = ensure_app_user(t, Events(), layout, app)
    assert again == {"user": user.pw_name, "changed": []}


@pytest.mark.skipif(os.geteuid() != 0, reason="making users needs root")
def test_it_refuses_a_user_of_that_name_that_is_not_the_apps(node):
    t, layout, app, _ = node
    subprocess.run(["useradd", "--system", "--no-create-home", "--comment", "someone else", app_user(app)], check=True)
    with pytest.raises(UserError, match=f"the system user {app_user(app)} exists but is not toppcloud's user of app"):
        ensure_app_user(t, Events(), layout, app)
    assert os.stat(layout.app_dir(app)).st_gid == 0  # nothing was changed
