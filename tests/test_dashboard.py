"""The admin's dashboard (index), the App page and deploying an uploaded archive (issue 15, point 8)."""

import io
import tarfile
import zipfile
from pathlib import Path

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from jobs.engine import events
from jobs.engine.states import Kind
from jobs.models import Job, LiveRelease
from jobs.steps import cron
from toppcloud_site.records.models import App, ConfigValue, Node, Release

pytestmark = pytest.mark.django_db
HELLO = Path(__file__).resolve().parent.parent / "fixtures" / "apps" / "hello"


def finished(kind, target, *, error=None, result=None, params=None):
    with transaction.atomic():
        job = events.new_job(kind, target=target, params=params or {}, actor_kind="user", actor="alice")
    events.record(job.pk, Kind.STARTED, "worker:w1", attempt=1, worker="w1", hostname="h", pid=1)
    if error:
        events.record(job.pk, Kind.FAILED, "worker:w1", error=error)
    else:
        events.record(job.pk, Kind.SUCCEEDED, "worker:w1", summary="done", result=result)
    return Job.objects.get(pk=job.pk)


def an_app(n):
    """An app live on its own node, pinged, with a cron entry that ran once."""
    app = App.objects.create(name=f"dash{n}")
    node = Node.objects.create(name=f"dash-node{n}", transport="local", address="127.0.0.1", http_port=18100 + n,
                               root=f"/srv/toppcloud-dash{n}", set_up_at=timezone.now())
    release = Release.objects.create(app=app, name=f"r{n}", artifact_sha256=f"{n:064d}", version=f"1.{n}", app_ini={
        "cron": [{"name": "tidy", "schedule": "*/5 * * * *", "fields": ["*/5", "*", "*", "*", "*"],
                  "target": "/cron/tidy", "timeout": 60, "argv": None}]})
    deploy = finished("deploy", f"app:{app.name}@{node.name}")
    LiveRelease.objects.create(app=app, node=node, host=f"{app.name}.test", path="/", release=release, port=9000 + n,
                               job_id=deploy.pk, activated_at=deploy.started_at)
    finished("ping_node", f"node:{node.name}", result={
        "round_trip_seconds": 0.012, "uptime_seconds": 100.0, "load1": 0.25 + n, "load5": 0.5, "load15": 0.75,
        "mem_total_bytes": 8 * 2**30, "mem_available_bytes": 2 * 2**30,
        "disk_total_bytes": 100 * 2**30, "disk_free_bytes": 40 * 2**30})
    cron.sync_entries(app, release)
    finished("cron_run", f"cron:{app.name}:tidy")
    return app, node


def test_the_index_is_a_dashboard_in_a_bounded_number_of_queries(admin_client):
    an_app(1)
    finished("deploy", "app:dash1@dash-node1", error="health check /health answered 500\nTraceback: ...")
    with transaction.atomic():
        running = events.new_job("backup", target="app:dash1", params={"app": "dash1"}, actor_kind="user",
                                 actor="bob")
    with CaptureQueriesContext(connection) as one:
        page = admin_client.get(reverse("admin:index")).content.decode()
    for text in ('data-app="dash1" data-node="dash-node1" data-release="r1"', "dash1.test/", "v1.1",
                 "1.25, 0.5, 0.75",                                         # load
                 "60%", "40.0\xa0GB free",                                  # disk: used, free
                 "75%",                                                     # memory used
                 f"job {running.pk}", "app:dash1",                          # running now
                 "health check /health answered 500",                       # a failure's first line
                 "*/5 * * * *", "tidy"):                                    # the next cron run
        assert text in page, text
    assert "Traceback" not in page  # the first line only
    assert "unhealthy" in page  # the failed deploy came after the live release's activation

    for n in range(2, 7):  # five more apps, nodes, pings, cron entries and runs: not one query more
        an_app(n)
    with CaptureQueriesContext(connection) as six:
        page = admin_client.get(reverse("admin:index")).content.decode()
    assert "dash6.test/" in page and "6.25, 0.5, 0.75" in page
    assert len(six) == len(one), [q["sql"] for q in six.captured_queries]
    dashboard_queries = [q for q in six.captured_queries if "django_session" not in q["sql"]
                         and "auth_user" not in q["sql"] and "django_admin_log" not in q["sql"]]
    assert len(dashboard_queries) <= 10, [q["sql"] for q in dashboard_queries]
    print(f"dashboard: {len(six)} queries in all, {len(dashboard_queries)} for the dashboard")


def test_the_dashboard_shows_only_what_the_user_may_view(client, django_user_model):
    from django.contrib.auth.models import Permission

    an_app(1)
    user = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_app"))
    client.force_login(user)
    page = client.get(reverse("admin:index")).content.decode()
    assert 'id="dash-apps"' in page and "dash1.test/" in page
    assert 'id="dash-nodes"' not in page and 'id="dash-failures"' not in page and "dash-node1 " not in page


def test_the_app_page_shows_releases_jobs_backups_cron_config_masked_and_logs(admin_client):
    app, node = an_app(1)
    older = Release.objects.create(app=app, name="r0", artifact_sha256="f" * 64)
    secret = ConfigValue(scope="app", app=app, key="API_TOKEN")
    secret.set_value("very-secret-token-5f1e2d", secret=True)
    secret.save()
    plain = ConfigValue(scope="app", app=app, key="GREETING")
    plain.set_value("hello there", secret=False)
    plain.save()
    page = admin_client.get(reverse("admin:records_app_change", args=[app.pk])).content.decode()
    for text in ('id="release-r1"', 'id="release-r0"', "Roll back to it", "Deploy", "dash-node1",
                 "API_TOKEN", "(secret, set)", "GREETING", "hello there",
                 "tidy", "*/5 * * * *", "cron_run", "deploy",
                 reverse("admin:records_app_logs", args=[app.pk]), "kind__exact=logs",
                 'name="csrfmiddlewaretoken"'):
        assert text in page, text
    assert "very-secret-token-5f1e2d" not in page
    assert older.name in page


def test_the_app_page_buttons_start_deploy_and_rollback_jobs_by_post_with_permission(
        admin_client, client, django_user_model, django_capture_on_commit_callbacks):
    from django.contrib.auth.models import Permission

    app, node = an_app(1)
    older = Release.objects.create(app=app, name="r0", artifact_sha256="e" * 64)
    url = reverse("admin:records_app_release", args=[app.pk])
    assert admin_client.get(url).status_code == 405  # POST only
    with django_capture_on_commit_callbacks(execute=False):
        response = admin_client.post(url, {"release": older.pk, "node": node.pk, "do": "rollback"})
    job = Job.objects.get(kind="rollback", target=f"app:{app.name}@{node.name}")
    assert job.params == {"app": app.name, "node": node.name, "release": "r0"} and job.actor == "admin"
    assert response["Location"] == reverse("admin:jobs_job_change", args=[job.pk])
    with django_capture_on_commit_callbacks(execute=False):
        admin_client.post(url, {"release": older.pk, "node": node.pk, "do": "deploy"})
    assert Job.objects.get(kind="deploy", target=f"app:{app.name}@{node.name}", params__release="r0").params == {
        "app": app.name, "release": "r0", "node": node.name}

    viewer = django_user_model.objects.create_user("viewer2", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_app"))
    client.force_login(viewer)
    page = client.get(reverse("admin:records_app_change", args=[app.pk])).content.decode()
    assert "Roll back to it" not in page and 'id="app-config"' not in page  # config needs view_configvalue
    assert client.post(url, {"release": older.pk, "node": node.pk, "do": "rollback"}).status_code == 403
    assert Job.objects.filter(kind="rollback", target=f"app:{app.name}@{node.name}").count() == 1

    from django.test import Client
    csrf = Client(enforce_csrf_checks=True)
    csrf.force_login(django_user_model.objects.get(username="admin"))
    assert csrf.post(url, {"release": older.pk, "node": node.pk, "do": "rollback"}).status_code == 403  # no token


def tar_gz(files, top=""):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(top + name)
            if isinstance(data, tarfile.TarInfo):
                info = data
                tar.addfile(info)
                continue
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def hello_files():
    return {p.relative_to(HELLO).as_posix(): p.read_bytes() for p in HELLO.rglob("*") if p.is_file()
            and "__pycache__" not in p.parts}


def deploys_to(node):
    """A deploy job to the node that is not a recorded refusal (those are failed jobs no worker ran)."""
    return Job.objects.filter(kind__in=["deploy", "deploy_many"], target__endswith=f"@{node.name}").exclude(
        events__kind="job.failed", events__data__refused=True).exists()


def refusal_to(node):
    """The one recorded refusal of an upload to the node: a failed deploy job, only queued and failed."""
    job = Job.objects.get(kind="deploy", target__endswith=f"@{node.name}")
    assert job.status == "failed" and [e.kind for e in job.events.order_by("seq")] == ["job.queued", "job.failed"]
    return job


def upload(admin_client, name, data, node, **extra):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return admin_client.post(reverse("admin:records_app_upload"), {
        "archive": SimpleUploadedFile(name, data), "nodes": [node.pk], "max_parallel": 4, **extra})


@pytest.mark.parametrize("kind", ["tar.gz", "zip", "tar.gz in a top directory"])
def test_an_uploaded_archive_is_packed_like_the_command_and_deployed(admin_client, kind,
                                                                     django_capture_on_commit_callbacks):
    from jobs.steps.releases import pack_release

    node = Node.objects.create(name="upload-node", transport="local", address="127.0.0.1", http_port=18200,
                               root="/srv/toppcloud-upload")
    files = hello_files()
    if kind == "zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for name, data in files.items():
                z.writestr(name, data)
        data, name = buf.getvalue(), "hello.zip"
    else:
        data, name = tar_gz(files, top="hello/" if "top" in kind else ""), "hello.tar.gz"
    with django_capture_on_commit_callbacks(execute=False):
        response = upload(admin_client, name, data, node)
    job = Job.objects.get(kind="deploy", target="app:hello@upload-node")
    assert response.status_code == 302 and response["Location"] == reverse("admin:jobs_job_change", args=[job.pk])
    release = Release.objects.get(app__name="hello", name=job.params["release"])
    same, _ = pack_release(HELLO)  # the same bytes as `manage.py deploy fixtures/apps/hello` packs
    assert release.artifact_sha256 == same.artifact_sha256 and job.actor == "admin"


@pytest.mark.parametrize("members, says", [
    ({"app.ini": b"[production]\napp_name = evil\nrunner = app:application\n", "../escape.txt": b"x"},
     "archive member '../escape.txt' would be written outside the release directory"),
    ({"/etc/cron.d/x": b"x", "app.ini": b""}, "archive member '/etc/cron.d/x' would be written outside"),
    ({"README": b"no app.ini here"}, "has no app.ini at its top or in its one top directory"),
    ({"app.ini": b"[production]\napp_name = Bad Name\nrunner = app:application\n"}, "app_name"),
])
def test_a_hostile_or_bad_archive_is_refused_with_a_clear_message_and_nothing_deployed(admin_client, members, says):
    node = Node.objects.create(name="upload-bad", transport="local", address="127.0.0.1", http_port=18201,
                               root="/srv/toppcloud-upload-bad")
    page = upload(admin_client, "evil.tar.gz", tar_gz(members), node).content.decode()
    assert "nothing was deployed:" in page and says.replace("'", "&#x27;") in page, page[-3000:]
    assert not deploys_to(node) and not Release.objects.filter(app__name="evil").exists()
    refused = refusal_to(node)  # the attempt is in the job list, with what was refused
    assert says in refused.error and refused.actor == "admin" and f"recorded as job {refused.pk}" in page


def test_a_zip_with_a_link_out_or_not_an_archive_is_refused(admin_client):
    node = Node.objects.create(name="upload-zip", transport="local", address="127.0.0.1", http_port=18202,
                               root="/srv/toppcloud-upload-zip")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("app.ini", b"[production]\napp_name = zipper\nrunner = app:application\n")
        link = zipfile.ZipInfo("secrets")
        link.external_attr = (0o120777 << 16)
        z.writestr(link, "/etc/shadow")
    page = upload(admin_client, "hello.zip", buf.getvalue(), node).content.decode()
    assert "archive member &#x27;secrets&#x27; is a link to &#x27;/etc/shadow&#x27;, outside the release" in page
    page = upload(admin_client, "notes.txt", b"just some text", node).content.decode()
    assert "notes.txt is not an app archive: send a .tar.gz, .tgz or .zip" in page
    page = admin_client.post(reverse("admin:records_app_upload"), {"archive": "", "max_parallel": 4}).content.decode()
    assert "This field is required" in page
    assert not deploys_to(node) and not Release.objects.filter(app__name="zipper").exists()


def test_an_upload_needs_change_app_and_add_app_for_a_new_app(client, django_user_model):
    from django.contrib.auth.models import Permission

    node = Node.objects.create(name="upload-perm", transport="local", address="127.0.0.1", http_port=18203,
                               root="/srv/toppcloud-upload-perm")
    user = django_user_model.objects.create_user("deployer", password="pw", is_staff=True)
    client.force_login(user)
    assert client.get(reverse("admin:records_app_upload")).status_code == 403
    user.user_permissions.add(*Permission.objects.filter(codename__in=["view_app", "change_app"]))
    files = hello_files()
    files["app.ini"] = files["app.ini"].replace(b"app_name = hello", b"app_name = uploadperm")
    page = upload(client, "hello.tar.gz", tar_gz(files), node).content.decode()
    assert "nothing was deployed: there is no app &#x27;uploadperm&#x27;, and creating one needs permission to add " \
        "apps" in page
    assert not App.objects.filter(name="uploadperm").exists() and not deploys_to(node)
