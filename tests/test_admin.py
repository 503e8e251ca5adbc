"""The admin: jobs read-only with their timeline, node actions start jobs."""

import pytest
from django.db import transaction
from django.urls import reverse

from jobs.engine import events
from jobs.models import Job
from jobs.engine.states import Kind
from toppcloud_site.records.models import Node, ServerGroup

pytestmark = pytest.mark.django_db


@pytest.fixture
def finished_job():
    with transaction.atomic():
        job = events.new_job("setup_node", target="node:web1", params={"node": "web1"}, actor_kind="user",
                             actor="alice")
    events.record(job.pk, Kind.STARTED, "worker:w1", attempt=1, worker="w1", hostname="h", pid=1)
    events.record(job.pk, "step.started", "worker:w1", step="layout")
    events.record(job.pk, "command", "worker:w1", step="layout", argv=["mkdir", "-p", "/srv/x"], rc=0,
                  stdout="made <dirs>", stderr="", seconds=0.01)
    events.record(job.pk, "step.finished", "worker:w1", step="layout", ok=True, seconds=0.02)
    events.record(job.pk, Kind.FAILED, "worker:w1", error="nginx -t failed")
    return job


def test_it_lists_jobs_with_status_kind_target_actor_and_duration(admin_client, finished_job):
    page = admin_client.get(reverse("admin:jobs_job_changelist")).content.decode()
    for text in ("setup_node", "node:web1", "user:alice", "failed", "duration"):
        assert text in page
    filtered = admin_client.get(reverse("admin:jobs_job_changelist") + "?status__exact=succeeded").content.decode()
    assert "node:web1" not in filtered


def test_it_shows_the_event_timeline_read_only(admin_client, finished_job):
    url = reverse("admin:jobs_job_change", args=[finished_job.pk])
    page = admin_client.get(url).content.decode()
    positions = [page.index(f'id="event-{seq}"') for seq in range(1, 7)]
    assert positions == sorted(positions)
    assert "<details><summary>output</summary>" in page and "made &lt;dirs&gt;" in page  # escaped, collapsible
    assert "nginx -t failed" in page and "mkdir -p /srv/x" in page
    assert 'name="_save"' not in page and "deletelink" not in page
    assert admin_client.post(url, {"status": "succeeded"}).status_code == 403
    assert Job.objects.get(pk=finished_job.pk).status == "failed"


def test_the_set_up_action_starts_a_job_as_the_admin(admin_client, admin_user, django_capture_on_commit_callbacks):
    good = Node.objects.create(name="admin-good", transport="local", address="127.0.0.1", http_port=18081,
                               root="/srv/toppcloud-admin-test")
    bad = Node.objects.create(name="admin-bad", transport="ssh", address="127.0.0.1", http_port=18082,
                              root="/srv/x", host_key="")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = admin_client.post(reverse("admin:records_node_changelist"),
                                     {"action": "set_up_nodes", "_selected_action": [good.pk, bad.pk]}, follow=True)
    page = response.content.decode()
    job = Job.objects.get(target="node:admin-good")
    assert (job.kind, job.status, job.actor_kind, job.actor) == ("setup_node", "queued", "user", admin_user.username)
    assert f"job {job.pk} (admin-good)" in page
    assert "node &#x27;admin-bad&#x27; is not valid, no job was started: host_key" in page.lower()
    assert not Job.objects.filter(target="node:admin-bad").exists()
    assert len(callbacks) == 1  # one message to the broker, sent on commit


def test_release_and_app_pages_start_deploy_and_rollback_jobs(admin_client, admin_user,
                                                             django_capture_on_commit_callbacks):
    from django.utils import timezone

    from jobs.models import LiveRelease
    from toppcloud_site.records.models import App, Release

    app = App.objects.create(name="adminapp")
    node = Node.objects.create(name="admin-node", transport="local", address="127.0.0.1", http_port=18090,
                               root="/srv/toppcloud-admin-deploy")
    release = Release.objects.create(app=app, name="r1", artifact_sha256="a" * 64, version="1",
                                     app_ini={"location_host": "adminapp.test", "location_path": "/"})
    url = reverse("admin:records_release_changelist")
    page = admin_client.post(url, {"action": "deploy_to_node", "_selected_action": [release.pk]}).content.decode()
    assert "Deploy to a node" in page and "admin-node" in page  # asks where first, starts nothing
    assert not Job.objects.filter(kind="deploy").exists()
    with django_capture_on_commit_callbacks(execute=False):
        admin_client.post(url, {"action": "deploy_to_node", "_selected_action": [release.pk], "node": node.pk})
    job = Job.objects.get(kind="deploy")
    assert job.params == {"app": "adminapp", "release": "r1", "node": "admin-node"}
    assert (job.actor_kind, job.actor) == ("user", admin_user.username)

    LiveRelease.objects.create(app=app, node=node, host="adminapp.test", path="/", release=release, port=9000,
                               job_id=job.pk, activated_at=timezone.now())
    app_page = admin_client.get(reverse("admin:records_app_change", args=[app.pk])).content.decode()
    assert "live now (from release.activated events)" in app_page.lower() and "9000" in app_page
    with django_capture_on_commit_callbacks(execute=False):
        admin_client.post(reverse("admin:records_app_changelist"),
                          {"action": "roll_back", "_selected_action": [app.pk]})
    rollback = Job.objects.get(kind="rollback")
    assert rollback.params == {"app": "adminapp", "node": "admin-node"} and rollback.target == "app:adminapp@admin-node"


@pytest.fixture
def stored_backup():
    import hashlib
    import io

    from jobs.steps.data import archive_path
    from nodeops.hostside.node_data import ArchiveWriter, manifest_bytes
    from toppcloud_site.records.models import App, Backup, Service

    app = App.objects.create(name="adminnotes")
    node = Node.objects.create(name="admin-data", transport="local", address="127.0.0.1", http_port=18083,
                               root="/srv/toppcloud-admin-data")
    Service.objects.create(app=app, kind="postgresql", node=node, password="canary-password-0123456789",
                           settings={"dbname": "adminnotes", "role": "adminnotes", "port": 5433, "version": "15"})
    backup = Backup(app=app, name="adminnotes-20261125-000000-backup-j1", kind="backup", job_id=None,
                    services=["postgresql"])
    path = archive_path(backup)
    with open(path, "wb") as f:
        w = ArchiveWriter(f)
        w.add("postgresql.sql", io.BytesIO(b"SELECT 1;\n"))
        manifest = w.finish(app=app.name, release="", created_at="now", services=["postgresql"])
    backup.size, backup.manifest = path.stat().st_size, manifest
    backup.manifest_sha256 = hashlib.sha256(manifest_bytes(manifest)).hexdigest()
    backup.save()
    yield backup
    path.unlink(missing_ok=True)


def test_backups_are_listed_and_downloadable_by_staff_only(admin_client, client, stored_backup):
    from jobs.steps.data import archive_path

    page = admin_client.get(reverse("admin:records_backup_changelist")).content.decode()
    assert stored_backup.name in page and "postgresql" in page
    url = reverse("admin:records_backup_download", args=[stored_backup.pk])
    response = admin_client.get(url)
    assert response.status_code == 200 and response["Content-Disposition"] == (
        f'attachment; filename="{stored_backup.name}.tar"')
    assert b"".join(response.streaming_content) == archive_path(stored_backup).read_bytes()
    assert client.get(url).status_code == 302  # not logged in: to the login page
    assert admin_client.get(reverse("admin:records_backup_change", args=[stored_backup.pk])).status_code == 200
    assert admin_client.post(reverse("admin:records_backup_delete", args=[stored_backup.pk])).status_code == 403


def staff_client(name, *codenames):
    from django.contrib.auth.models import Permission, User
    from django.test import Client

    user = User.objects.create_user(name, password="pw-0123456789", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


def test_it_refuses_a_backup_download_without_download_backup_even_to_view_and_change_users(stored_backup):
    from toppcloud_site.records.models import AuditEntry

    url = reverse("admin:records_backup_download", args=[stored_backup.pk])
    viewer = staff_client("backup-viewer", "view_backup", "change_backup", "view_app", "change_app")
    assert viewer.get(reverse("admin:records_backup_changelist")).status_code == 200
    assert stored_backup.name in viewer.get(reverse("admin:records_backup_changelist")).content.decode()
    assert url not in viewer.get(reverse("admin:records_backup_change", args=[stored_backup.pk])).content.decode()
    response = viewer.get(url)
    assert response.status_code == 403 and not hasattr(response, "streaming_content")
    assert not AuditEntry.objects.filter(action="download").exists()


def test_it_hands_the_archive_to_a_user_with_download_backup_and_audits_it(stored_backup):
    from django.utils import timezone

    from jobs.steps.data import archive_path
    from toppcloud_site.records.models import AuditEntry

    url = reverse("admin:records_backup_download", args=[stored_backup.pk])
    downloader = staff_client("backup-taker", "view_backup", "download_backup")
    assert url in downloader.get(reverse("admin:records_backup_changelist")).content.decode()
    before = timezone.now()
    response = downloader.get(url)
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == archive_path(stored_backup).read_bytes()
    entry = AuditEntry.objects.get(action="download")
    assert (entry.actor, entry.model, entry.object_id, entry.object_repr) == (
        "user:backup-taker", "backup", str(stored_backup.pk), stored_backup.name)
    assert entry.changes == {"app": "adminnotes", "size": stored_backup.size,
                             "manifest_sha256": stored_backup.manifest_sha256}
    assert entry.at >= before


def test_the_backup_and_restore_actions_queue_jobs_and_pages_never_show_the_password(
        admin_client, admin_user, stored_backup, django_capture_on_commit_callbacks):
    from toppcloud_site.records.models import App, Service

    bare = App.objects.create(name="admin-bare")
    with django_capture_on_commit_callbacks(execute=False):
        page = admin_client.post(reverse("admin:records_app_changelist"), {
            "action": "back_up", "_selected_action": [stored_backup.app.pk, bare.pk]}, follow=True).content.decode()
        backup = Job.objects.get(kind="backup", target="app:adminnotes")
        assert (backup.params, backup.actor) == ({"app": "adminnotes"}, admin_user.username)
        assert f"job {backup.pk} (adminnotes)" in page and "admin-bare has no data services yet" in page.lower()
        assert not Job.objects.filter(target="app:admin-bare").exists()
        admin_client.post(reverse("admin:records_backup_changelist"), {
            "action": "restore_into_its_app", "_selected_action": [stored_backup.pk]}, follow=True)
    restore = Job.objects.get(kind="restore", target="app:adminnotes")
    assert restore.params == {"backup": stored_backup.name, "app": "adminnotes"}
    service = Service.objects.get(app=stored_backup.app)
    for url in (reverse("admin:records_app_change", args=[stored_backup.app.pk]),
                reverse("admin:records_service_change", args=[service.pk]),
                reverse("admin:records_service_changelist")):
        body = admin_client.get(url).content.decode()
        assert "5433" in body or "adminnotes" in body
        assert service.password not in body


def test_cron_entries_are_listed_with_their_beat_schedule_and_run_now_queues_a_run(
        admin_client, admin_user, django_capture_on_commit_callbacks):
    from jobs.steps import cron
    from toppcloud_site.records.models import App, CronEntry, Release

    app = App.objects.create(name="cronapp")
    release = Release.objects.create(app=app, name="r1", artifact_sha256="1" * 64, app_ini={"cron": [
        {"name": "cleanup", "schedule": "*/5 * * * *", "fields": ["*/5", "*", "*", "*", "*"],
         "target": "/cron/cleanup", "timeout": 60, "argv": None}]})
    assert cron.sync_entries(app, release) == {"added": ["cleanup"], "changed": [], "removed": []}
    page = admin_client.get(reverse("admin:records_cronentry_changelist")).content.decode()
    assert "cleanup" in page and "*/5 * * * *" in page and "cron cronapp cleanup" in page and "never" in page
    entry = CronEntry.objects.get(app=app, name="cleanup")
    with django_capture_on_commit_callbacks(execute=False):
        admin_client.post(reverse("admin:records_cronentry_changelist"),
                          {"action": "run_now", "_selected_action": [entry.pk]}, follow=True)
    job = Job.objects.get(kind="cron_run", target="cron:cronapp:cleanup")
    assert (job.actor_kind, job.actor, job.params) == ("user", admin_user.username,
                                                       {"app": "cronapp", "entry": "cleanup"})
    assert cron.sync_entries(app, Release.objects.create(app=app, name="r2", artifact_sha256="2" * 64,
                                                         app_ini={"cron": []}))["removed"] == ["cleanup"]
    assert not CronEntry.objects.filter(app=app).exists()


def test_config_values_are_edited_in_the_admin_and_reserved_names_refused(admin_client):
    from toppcloud_site.records.models import ConfigValue

    url = reverse("admin:records_configvalue_add")
    response = admin_client.post(url, {"scope": "global", "key": "PATH", "value": "/tmp"})
    assert "set by toppcloud itself" in response.content.decode()
    admin_client.post(url, {"scope": "global", "key": "SENTRY_DSN", "value": "https://x@example.test/1"})
    assert ConfigValue.objects.get(key="SENTRY_DSN").scope == "global"


def test_the_disable_and_enable_actions_queue_maintenance_jobs_as_the_admin(admin_client, admin_user,
                                                                             django_capture_on_commit_callbacks):
    from toppcloud_site.records.models import App

    app = App.objects.create(name="maintapp")
    for action in ("disable", "enable"):
        with django_capture_on_commit_callbacks(execute=False):
            page = admin_client.post(reverse("admin:records_app_changelist"),
                                     {"action": action, "_selected_action": [app.pk]}, follow=True)
        job = Job.objects.get(kind=action)
        assert (job.params, job.target) == ({"app": "maintapp"}, "app:maintapp")
        assert (job.actor_kind, job.actor) == ("user", admin_user.username)
        assert f"job {job.pk}" in page.content.decode()
    assert App.objects.get(pk=app.pk).maintenance is False  # the job sets it, not the action


def test_the_front_door_action_queues_one_job_for_the_chosen_nodes(admin_client, admin_user,
                                                                    django_capture_on_commit_callbacks):
    nodes = [Node.objects.create(name=f"door-{i}", address=f"127.0.9.{i}", transport="local") for i in (1, 2)]
    with django_capture_on_commit_callbacks(execute=False):
        admin_client.post(reverse("admin:records_node_changelist"),
                          {"action": "render_front_door", "_selected_action": [n.pk for n in nodes]})
    job = Job.objects.get(kind="front_door")
    assert (job.params, job.target, job.actor) == ({"nodes": ["door-1", "door-2"]}, "nodes", admin_user.username)


def test_the_promote_action_queues_a_promote_of_one_replica_and_refuses_the_rest(
        admin_client, admin_user, django_capture_on_commit_callbacks):
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHIpoHBQJsj1DS6Yk5bP3OrzP3iiNmBVtHrLt0EV0Bd8"
    group = ServerGroup.objects.create(name="admin-promote")
    primary = Node.objects.create(name="admin-db1", address="127.0.0.1", http_port=18091, group=group, role="db",
                                  host_key=key)
    replica = Node.objects.create(name="admin-db2", address="127.0.0.1", http_port=18092, group=group,
                                  role="db-replica", host_key=key, facts={"replica_of": "admin-db1"})
    ServerGroup.objects.filter(pk=group.pk).update(database_node=primary)
    url = reverse("admin:records_node_changelist")
    page = admin_client.post(url, {"action": "promote_to_primary", "_selected_action": [primary.pk]},
                             follow=True).content.decode()
    assert "Nothing was promoted: admin-db1 is the primary of group admin-promote already" in page
    page = admin_client.post(url, {"action": "promote_to_primary", "_selected_action": [primary.pk, replica.pk]},
                             follow=True).content.decode()
    assert "Promote one replica at a time" in page
    assert not Job.objects.filter(kind="promote").exists()
    with django_capture_on_commit_callbacks(execute=False):
        page = admin_client.post(url, {"action": "promote_to_primary", "_selected_action": [replica.pk]},
                                 follow=True).content.decode()
    job = Job.objects.get(kind="promote")
    assert (job.target, job.params, job.actor_kind, job.actor) == ("group:admin-promote", {"node": "admin-db2"},
                                                                   "user", admin_user.username)
    assert f"job {job.pk} (admin-db2)" in page
