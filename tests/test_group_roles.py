"""Node roles in a server group: `node add/set --role`, the group's rules, the admin pages, group documents.

Database only (no hosts): what the records, the pages and the documents say.
"""

import io

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse
from django.utils import timezone

from jobs.models import Job, LiveRelease

from toppcloud_site.records.models import App, AuditEntry, Location, Node, Release, ServerGroup, Service
from toppcloud_site.records.roles import NOWHERE, affected_groups

pytestmark = pytest.mark.django_db
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


def node(*args):
    out = io.StringIO()
    call_command("node", *args, stdout=out)
    return out.getvalue()


def add(name, address, *args):
    return node("add", name, "--address", address, "--host-key", HOST_KEY, *args)


@pytest.fixture
def group():
    """Group g: lb1 (lb), db1 (db, the database node), app1 and app2 (app); node spare outside any group."""
    add("lb1", "10.1.0.2", "--group", "g", "--role", "lb")
    add("db1", "10.1.0.3", "--group", "g", "--role", "db")
    add("app1", "10.1.0.4", "--group", "g")
    add("app2", "10.1.0.5", "--group", "g", "--role", "app")
    add("spare", "10.1.0.6")
    return ServerGroup.objects.get(name="g")


def roles_of(group_name):
    return dict(Node.objects.filter(group__name=group_name).values_list("name", "role"))


def test_it_sets_roles_by_command_and_the_db_role_makes_the_database_node(group):
    assert roles_of("g") == {"lb1": "lb", "db1": "db", "app1": "app", "app2": "app"}
    assert group.database_node.name == "db1"  # `node add --role db` made it the database node
    assert "lb1                  ssh   root@10.1.0.2:22 root=/srv/toppcloud http=80 lb@g not set up" in node("list")

    # A replica of the group's database node; then db1 gives up the db role (no app keeps a database there)
    # and app2 takes it: the database node follows the role both ways.
    assert node("set", "app1", "--role", "db-replica") == "node app1: role db-replica in group g\n"
    assert node("set", "db1", "--role", "app") == "node db1: role app in group g\n"
    assert ServerGroup.objects.get(name="g").database_node is None
    node("set", "app2", "--role", "db")
    assert ServerGroup.objects.get(name="g").database_node.name == "app2"
    # A node joins a group with its role, and leaves it (an app node then).
    assert node("set", "spare", "--group", "g2", "--role", "lb") == "node spare: role lb in group g2\n"
    node("set", "spare", "--role", "app")
    assert node("set", "spare", "--no-group") == "node spare: role app in no group\n"
    changes = AuditEntry.objects.filter(model="node", object_repr="app1", action="update").first().changes
    assert changes["role"] == ["app", "db-replica"]


REFUSED = [
    ("no such role", ["add", "n9", "--address", "10.1.0.9", "--host-key", HOST_KEY, "--role", "boss"],
     "--role 'boss' is not a role: use one of app, lb, db, db-replica"),
    ("an lb without a group", ["add", "n9", "--address", "10.1.0.9", "--host-key", HOST_KEY, "--role", "lb"],
     "node 'n9' not added: role: a node with role lb belongs to a server group: give it one (--group GROUP)"),
    ("a second lb", ["add", "n9", "--address", "10.1.0.9", "--host-key", HOST_KEY, "--group", "g", "--role", "lb"],
     "role: group g already has its lb node lb1: a group has at most one load balancer node"),
    ("a second lb by set", ["set", "app1", "--role", "lb"],
     "node app1 not changed: role: group g already has its lb node lb1: a group has at most one load balancer node"),
    ("a second db", ["set", "app2", "--role", "db"],
     "role: group g already has its db node db1: a group has at most one database (primary) node"),
    ("a replica without a primary", ["set", "spare", "--group", "g2", "--role", "db-replica"],
     "role: a db-replica replicates its group's database node, and group g2 has none: give the group a db node"),
    ("the db node leaving for another group", ["set", "db1", "--group", "g2"],
     "group: node db1 is the database node of group g: it cannot be the db node of another group"),
    ("the lb out of every group", ["set", "lb1", "--no-group"],
     "role: a node with role lb belongs to a server group"),
    ("a db node holding databases", ["set", "db1", "--role", "app"],
     "node db1 is group g's database node and apps keep their databases on it (shop): it stays db"),
    ("nothing to set", ["set", "app1"], "say what to change: --role ROLE, --group GROUP or --no-group"),
    ("an unknown node", ["set", "nowhere", "--role", "app"], "there is no node 'nowhere'"),
    ("a bad group name", ["set", "app1", "--group", "../g"], "--group '../g': name:"),
]


@pytest.mark.parametrize("label,args,error", REFUSED, ids=[r[0] for r in REFUSED])
def test_a_role_the_group_rules_refuse_is_refused_with_the_reason_and_changes_nothing(group, label, args, error):
    shop = App.objects.create(name="shop", group=group)
    Service.objects.create(app=shop, kind="postgresql", node=Node.objects.get(name="db1"))
    before = (sorted(Node.objects.values_list("name", "group__name", "role")),
              list(ServerGroup.objects.values_list("name", "database_node__name")), AuditEntry.objects.count())
    with pytest.raises(CommandError) as info:
        node(*args)
    assert error in str(info.value), str(info.value)
    after = (sorted(Node.objects.values_list("name", "group__name", "role")),
             list(ServerGroup.objects.values_list("name", "database_node__name")), AuditEntry.objects.count())
    assert after == before


def node_form(obj, **changes):
    """The Node change form's fields as the page posts them."""
    data = {f: getattr(obj, f) for f in ("name", "transport", "role", "address", "ssh_port", "ssh_user", "root",
                                        "http_port", "https_port", "pg_cluster", "pg_port", "host_key")}
    data["group"] = obj.group_id or ""
    data.update(changes)
    return data


def test_the_admin_shows_filters_and_edits_roles_with_the_groups_rules(admin_client, group):
    page = admin_client.get(reverse("admin:records_node_changelist") + "?role__exact=lb").content.decode()
    assert "lb1" in page and "app1" not in page and "By role" in page
    page = admin_client.get(reverse("admin:records_servergroup_changelist")).content.decode()
    assert "load balancer" in page.lower() and ">lb1<" in page and "synchronous replication" in page.lower()

    app1 = Node.objects.get(name="app1")
    url = reverse("admin:records_node_change", args=[app1.pk])
    page = admin_client.post(url, node_form(app1, role="lb")).content.decode()
    assert "group g already has its lb node lb1" in page and Node.objects.get(name="app1").role == "app"
    # db1 gives up the db role on its page, app1 takes it: the group's database node follows.
    db1 = Node.objects.get(name="db1")
    response = admin_client.post(reverse("admin:records_node_change", args=[db1.pk]), node_form(db1, role="app"))
    assert response.status_code == 302 and ServerGroup.objects.get(name="g").database_node is None
    response = admin_client.post(url, node_form(app1, role="db"))
    assert response.status_code == 302 and ServerGroup.objects.get(name="g").database_node.name == "app1"

    # The group's page: the database node must be its db node; synchronous replication is a checkbox.
    url = reverse("admin:records_servergroup_change", args=[group.pk])
    form = {"name": "g", "description": "", "database_node": Node.objects.get(name="app2").pk,
            "static_publish": "", "static_publish_url": "", "synchronous_replication": "on"}
    page = admin_client.post(url, form).content.decode()
    assert "node app2 has role app in this group: make it the group&#x27;s db node" in page
    assert admin_client.post(url, {**form, "database_node": Node.objects.get(name="app1").pk}).status_code == 302
    assert ServerGroup.objects.get(name="g").synchronous_replication is True


def test_the_location_admin_edits_caching_at_the_balancer(admin_client, group):
    shop = App.objects.create(name="shop", group=group)
    loc = Location.objects.create(app=shop, host="shop.example.com", path="/")
    url = reverse("admin:records_location_change", args=[loc.pk])
    assert 'name="balancer_cache"' in admin_client.get(url).content.decode()
    response = admin_client.post(url, {"app": shop.pk, "host": "shop.example.com", "path": "/", "balancer_cache": "on"})
    assert response.status_code == 302 and Location.objects.get(pk=loc.pk).balancer_cache is True
    page = admin_client.get(reverse("admin:records_location_changelist") + "?balancer_cache__exact=1").content.decode()
    assert "shop.example.com" in page


# --- group documents ----------------------------------------------------------------------------------

def export(name="g"):
    out = io.StringIO()
    call_command("export_group", name, stdout=out)
    return out.getvalue()


def import_doc(tmp_path, text, *args):
    path = tmp_path / "group.toml"
    path.write_text(text)
    out = io.StringIO()
    call_command("import_group", str(path), *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_a_document_round_trips_roles_synchronous_replication_and_caching(group, tmp_path):
    ServerGroup.objects.filter(pk=group.pk).update(synchronous_replication=True)
    shop = App.objects.create(name="shop", group=group)
    Location.objects.create(app=shop, host="example.com", path="/shop/", balancer_cache=True)
    Location.objects.create(app=shop, host="shop.example.com", path="/")
    text = export()
    assert "synchronous_replication = true" in text and 'database_node = "db1"' in text
    assert '[nodes.lb1]\naddress = "10.1.0.2"' in text and 'role = "lb"' in text and 'role = "db"' in text
    assert 'balancer_cache = [\n    "example.com/shop/",\n]' in text

    # Drift: the lb moved to app1, db1 demoted with app2 the primary, the flag off, the cache moved.
    Node.objects.filter(name="lb1").update(role="app")
    Node.objects.filter(name="app1").update(role="lb")
    Node.objects.filter(name="db1").update(role="app")
    Node.objects.filter(name="app2").update(role="db")
    ServerGroup.objects.filter(pk=group.pk).update(synchronous_replication=False,
                                                   database_node=Node.objects.get(name="app2"))
    Location.objects.filter(app=shop).update(balancer_cache=True)
    assert export() != text
    lines = import_doc(tmp_path, text).splitlines()
    assert "~ group g: synchronous_replication False -> True" in lines
    assert "~ node app1: role 'lb' -> 'app'" in lines and "~ node lb1: role 'app' -> 'lb'" in lines
    assert "~ node app2: role 'db' -> 'app'" in lines and "~ group g: database_node app2 -> db1" in lines
    assert "~ app shop: location shop.example.com/ balancer_cache True -> False" in lines
    assert export() == text  # byte for byte
    assert roles_of("g") == {"lb1": "lb", "db1": "db", "app1": "app", "app2": "app"}


def test_a_document_from_before_roles_imports_with_the_defaults(tmp_path):
    old = ('[group]\nname = "old"\ndatabase_node = "odb"\n'
           '[nodes.odb]\naddress = "10.2.0.2"\ntransport = "local"\n'
           '[nodes.oapp]\naddress = "10.2.0.3"\ntransport = "local"\n'
           '[apps.site]\nlocations = ["old.example.com/"]\n')
    out = import_doc(tmp_path, old)
    assert "+ node odb (10.2.0.2, role db)" in out and "+ node oapp (10.2.0.3, role app)" in out
    group = ServerGroup.objects.get(name="old")
    assert group.database_node.name == "odb" and group.synchronous_replication is False
    assert roles_of("old") == {"odb": "db", "oapp": "app"}
    assert Location.objects.get(host="old.example.com").balancer_cache is False
    assert import_doc(tmp_path, export("old")).startswith("group old already matches")


BAD_DOCUMENTS = [
    ("unknown role", '[nodes.n1]\naddress = "10.3.0.2"\ntransport = "local"\nrole = "boss"\n',
     "node n1: role: Value 'boss' is not a valid choice"),
    ("two lbs", '[nodes.n1]\naddress = "10.3.0.2"\ntransport = "local"\nrole = "lb"\n'
                '[nodes.n2]\naddress = "10.3.0.3"\ntransport = "local"\nrole = "lb"\n',
     "already has its lb node"),
    ("a replica without a primary", '[nodes.n1]\naddress = "10.3.0.2"\ntransport = "local"\nrole = "db-replica"\n',
     "node n1: role: a db-replica replicates its group's database node, and group bad has none"),
    ("a db node that is not the database node", '[nodes.n1]\naddress = "10.3.0.2"\ntransport = "local"\nrole = "db"\n'
                                                '[nodes.n2]\naddress = "10.3.0.3"\ntransport = "local"\n',
     "node n1 is this group's db node: it is the database node"),
    ("a flag as a string", 'synchronous_replication = "yes"\n',
     "synchronous_replication in [group] must be true or false"),
    ("a cached location that is not the app's",
     '[apps.a]\nlocations = ["a.example.com/"]\nbalancer_cache = ["b.example.com/"]\n',
     "[apps.a] balancer_cache names b.example.com/, which is not one of its locations"),
]


@pytest.mark.parametrize("label,body,error", BAD_DOCUMENTS, ids=[b[0] for b in BAD_DOCUMENTS])
def test_a_document_with_roles_the_rules_refuse_changes_nothing(tmp_path, label, body, error):
    text = '[group]\nname = "bad"\n' + body  # group keys first, then the tables
    before = (Node.objects.count(), ServerGroup.objects.count(), AuditEntry.objects.count())
    with pytest.raises(CommandError) as info:
        import_doc(tmp_path, text)
    assert error in str(info.value) and "nothing was changed" in str(info.value), str(info.value)
    assert (Node.objects.count(), ServerGroup.objects.count(), AuditEntry.objects.count()) == before


def test_an_lb_given_on_the_node_page_renders_the_groups_front_doors_again(admin_client, admin_user, group,
                                                                            django_capture_on_commit_callbacks):
    shop = App.objects.create(name="shop", group=group)
    release = Release.objects.create(app=shop, name="20260101000000-abcdef01", artifact_sha256="0" * 64)
    job = Job.objects.create(kind="deploy", target="app:shop@app1", params={})
    for name in ("app1", "app2"):
        LiveRelease.objects.create(app=shop, node=Node.objects.get(name=name), host="shop.test", path="/",
                                   release=release, port=9000, job=job, activated_at=timezone.now())
    lb1 = Node.objects.get(name="lb1")
    url = reverse("admin:records_node_change", args=[lb1.pk])
    with django_capture_on_commit_callbacks(execute=False):
        page = admin_client.post(url, node_form(lb1, role="app"), follow=True).content.decode()
    queued = Job.objects.get(kind="front_door")
    assert queued.params == {"nodes": ["app1", "app2"]} and queued.actor == admin_user.username
    assert f"job {queued.pk} (app1, app2)" in page
    # A change that moves no lb (a port) queues nothing.
    with django_capture_on_commit_callbacks(execute=False):
        admin_client.post(url, node_form(Node.objects.get(name="lb1"), http_port=8081))
    assert Job.objects.filter(kind="front_door").count() == 1


def test_the_groups_whose_front_doors_trust_another_balancer_are_those_an_lb_came_to_left_or_moved_in(group):
    g, g2 = group.pk, ServerGroup.objects.create(name="g2").pk
    assert affected_groups((g, "app", "10.1.0.4"), (g, "lb", "10.1.0.4")) == {g}  # an lb came
    assert affected_groups((g, "lb", "10.1.0.2"), (g, "lb", "10.1.0.9")) == {g}  # the lb's address changed
    assert affected_groups((g, "lb", "10.1.0.2"), (g2, "lb", "10.1.0.2")) == {g, g2}  # the lb moved
    assert affected_groups((g, "app", "10.1.0.4"), (g, "db-replica", "10.1.0.4")) == set()  # same trust
    assert affected_groups((g, "app", "10.1.0.4"), (g2, "app", "10.1.0.4")) == {g}  # g has an lb, g2 none
    assert affected_groups(NOWHERE, (g2, "app", "10.1.0.7")) == set()
