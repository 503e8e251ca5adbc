"""Group documents: export_group / import_group (database only, no hosts)."""

import io

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from toppcloud_site.records import documents
from toppcloud_site.records.models import App, AuditEntry, ConfigValue, Location, Node, ServerGroup

pytestmark = pytest.mark.django_db
SECRET = "canary-group-doc-5ecret"
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


@pytest.fixture
def group():
    """A group with two nodes (one its database node), two apps, locations and config at both scopes."""
    group = ServerGroup.objects.create(name="web", description="the public sites\nsecond line")
    db = Node.objects.create(name="db1", group=group, address="10.0.0.5", host_key=HOST_KEY, pg_port=5434, role="db")
    Node.objects.create(name="app1", group=group, address="10.0.0.6", transport="local", root="/srv/tc",
                        http_port=8080)
    group.database_node = db
    group.save()
    shop, blog = App.objects.create(name="shop", group=group), App.objects.create(name="blog", group=group,
                                                                                   description="the blog")
    Location.objects.create(app=shop, host="shop.example.com", path="/")
    Location.objects.create(app=shop, host="example.com", path="/shop/")
    Location.objects.create(app=blog, host="example.com", path="/blog/")
    ConfigValue.objects.create(scope="group", group=group, key="REGION", value="eu-west")
    token = ConfigValue(scope="group", group=group, key="SHARED_TOKEN")
    token.set_value(SECRET, secret=True)
    token.save()
    ConfigValue.objects.create(scope="app", app=shop, key="GREETING", value="it's \"q\" $HOME\nünï")
    key = ConfigValue(scope="app", app=shop, key="STRIPE_KEY")
    key.set_value(SECRET + "-stripe", secret=True)
    key.save()
    return group


def export(name="web"):
    out = io.StringIO()
    call_command("export_group", name, stdout=out)
    return out.getvalue()


def import_doc(tmp_path, text, *args):
    path = tmp_path / "group.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    out, err = io.StringIO(), io.StringIO()
    call_command("import_group", str(path), *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_export_is_deterministic_text_with_secrets_by_name_only(group):
    text = export()
    assert text == export()
    assert SECRET not in text
    assert 'secrets = [\n    "SHARED_TOKEN",\n]' in text and '"STRIPE_KEY"' in text
    assert 'GREETING = "it\'s \\"q\\" $HOME\\nünï"' in text
    assert 'database_node = "db1"' in text and '[nodes.app1]' in text and 'http_port = 8080' in text
    assert text.index("[apps.blog]") < text.index("[apps.shop]")  # sorted
    assert 'locations = [\n    "example.com/shop/",\n    "shop.example.com/",\n]' in text
    assert documents.parse(text.encode())["name"] == "web"


def test_import_of_its_own_export_changes_nothing(group, tmp_path):
    audits = AuditEntry.objects.count()
    out, err = import_doc(tmp_path, export())
    assert out == "group web already matches " + str(tmp_path / "group.toml") + "; nothing to change\n"
    assert err == "" and AuditEntry.objects.count() == audits


def test_export_import_export_is_byte_identical_after_changes(group, tmp_path):
    text = export()
    # Drift: a node changed, a location gone, a value changed, one removed, one added, an app joined,
    # a node left, the database node unset.
    Node.objects.filter(name="app1").update(http_port=9090, ssh_user="deploy")
    Location.objects.filter(path="/shop/").delete()
    ConfigValue.objects.filter(key="REGION").update(value="us-east")
    ConfigValue.objects.filter(key="GREETING").delete()
    ConfigValue.objects.create(scope="app", app=App.objects.get(name="blog"), key="EXTRA", value="1")
    App.objects.create(name="stray", group=group)
    Node.objects.filter(name="db1").update(group=None)
    ServerGroup.objects.filter(pk=group.pk).update(database_node=None)
    assert export() != text
    audits = AuditEntry.objects.count()

    out, err = import_doc(tmp_path, text, "--dry-run")
    assert out.endswith("--dry-run: nothing was changed\n") and export() != text
    assert AuditEntry.objects.count() == audits

    out, err = import_doc(tmp_path, text, "--as", "alice")
    lines = out.splitlines()
    assert "~ node app1: ssh_user 'deploy' -> 'root'; http_port 9090 -> 8080" in lines
    assert "~ node db1: group (none) -> web" in lines
    assert "~ group web: database_node (none) -> db1" in lines
    assert "+ app shop: location example.com/shop/" in lines
    assert "~ config group web: REGION = 'eu-west'" in lines
    assert "+ config app shop: GREETING = 'it\\'s \"q\" $HOME\\nünï'" in lines
    assert "- config app blog: EXTRA" in lines
    assert "- app stray leaves the group (the app itself is kept)" in lines
    assert lines[-1] == "8 changes applied to group web" and err == ""
    assert export() == text  # byte for byte
    assert App.objects.get(name="stray").group is None
    new = AuditEntry.objects.filter(pk__gt=0).order_by("-id")[:8]
    assert {e.actor for e in new} == {"user:alice"}
    assert {(e.model, e.action) for e in new} >= {("node", "update"), ("location", "create"),
                                                 ("configvalue", "delete"), ("app", "update")}


def test_a_document_builds_the_group_in_an_empty_control_plane_and_names_the_secrets_to_set(group, tmp_path):
    text = export()
    ServerGroup.objects.filter(pk=group.pk).update(database_node=None)
    apps, nodes = App.objects.filter(group=group), Node.objects.filter(group=group)
    ConfigValue.objects.filter(app__in=apps).delete()
    Location.objects.filter(app__in=apps).delete()
    apps.delete()
    nodes.delete()
    group.delete()  # its config with it

    out, err = import_doc(tmp_path, text)
    assert "+ group web" in out and "+ node db1 (10.0.0.5, role db)" in out and "+ app shop" in out
    assert "secret SHARED_TOKEN (group web) is named in the document but not set" in err
    assert "secret STRIPE_KEY (app shop) is named" in err
    for key, scope in (("SHARED_TOKEN", {"group": ServerGroup.objects.get(name="web")}),
                       ("STRIPE_KEY", {"app": App.objects.get(name="shop")})):
        record = ConfigValue(key=key, scope="group" if "group" in scope else "app", **scope)
        record.set_value(SECRET, secret=True)
        record.save()
    assert export() == text
    assert Node.objects.get(name="db1").host_key == HOST_KEY


HOSTILE = [
    ("not toml", "[group\nname = 'web'", "not valid TOML"),
    ("not utf-8", b"[group]\nname = '\xff'", "not UTF-8"),
    ("unknown top-level key", "[group]\nname = 'web'\n[deploy]\nx = 1", "the document has unknown keys: deploy"),
    ("unknown node key", "[group]\nname = 'web'\n[nodes.n1]\naddress = '10.0.0.9'\nshell = 'rm -rf /'",
     "[nodes.n1] has unknown keys: shell"),
    ("no group name", "[group]\ndescription = 'x'", "[group] lacks name"),
    ("port as a string", "[group]\nname = 'web'\n[nodes.n1]\naddress = '10.0.0.9'\nssh_port = '22'",
     "ssh_port in [nodes.n1] must be a whole number"),
    ("port as a bool", "[group]\nname = 'web'\n[nodes.n1]\naddress = '10.0.0.9'\nhttp_port = true",
     "http_port in [nodes.n1] must be a whole number"),
    ("port out of range", "[group]\nname = 'web'\n[nodes.n1]\naddress = '10.0.0.9'\nhttp_port = 70000",
     "node n1: http_port"),
    ("root outside", "[group]\nname = 'web'\n[nodes.n1]\naddress = '10.0.0.9'\nroot = '/srv/../etc'",
     "node n1: root"),
    ("bad node address", "[group]\nname = 'web'\n[nodes.n1]\naddress = 'a b;reboot'", "node n1: address"),
    ("bad app name", "[group]\nname = 'web'\n[apps.'../x']\n", "app ../x: name"),
    ("location with ..", "[group]\nname = 'web'\n[apps.a]\nlocations = ['example.com/a/../b/']",
     "location 'example.com/a/../b/' in [apps.a]: path"),
    ("location with a space", "[group]\nname = 'web'\n[apps.a]\nlocations = ['exa mple.com/']",
     "location 'exa mple.com/' in [apps.a]: host"),
    ("location without a path", "[group]\nname = 'web'\n[apps.a]\nlocations = ['example.com']",
     "must be \"host/path\""),
    ("duplicate route", "[group]\nname = 'web'\n[apps.a]\nlocations = ['shop.example.com/']", "belongs to another app"),
    ("reserved config key", "[group]\nname = 'web'\n[group.config]\nPATH = '/tmp'", "config PATH of group web"),
    ("config value not a string", "[group]\nname = 'web'\n[group.config]\nN = 3", "N in [group] config must be a string"),
    ("huge value", "[group]\nname = 'web'\n[group.config]\nBIG = '" + "x" * 70000 + "'",
     "BIG in [group] config has 70000 characters"),
    ("huge document", "[group]\nname = 'web'\n" + "# padding\n" * 120000, "a group document is limited to"),
    ("secret with a value", "[group]\nname = 'web'\nsecrets = ['K']\n[group.config]\nK = 'v'",
     "names K both as a secret and with a value"),
    ("unknown database node", "[group]\nname = 'web'\ndatabase_node = 'nowhere'", "database_node 'nowhere'"),
]


@pytest.mark.parametrize("label,text,error", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_a_bad_document_is_refused_with_the_reason_and_changes_nothing(group, tmp_path, label, text, error):
    other = ServerGroup.objects.create(name="other")
    App.objects.filter(name="shop").update(group=other)  # its locations belong to another group now
    before, audits = export(), AuditEntry.objects.count()
    with pytest.raises(CommandError) as info:
        import_doc(tmp_path, text)
    assert error in str(info.value) and "nothing was changed" in str(info.value), str(info.value)
    assert export() == before and AuditEntry.objects.count() == audits


def test_a_document_wrong_late_changes_nothing_it_said_earlier(group, tmp_path):
    text = export().replace('description = "the blog"', 'description = "the new blog"')
    text += '\n[nodes.n9]\naddress = "10.0.0.9"\ntransport = "local"\n'
    text = text.replace('REGION = "eu-west"', 'REGION = "eu-west"\nPATH = "/evil"')
    before = export()
    with pytest.raises(CommandError, match="config PATH of group web"):
        import_doc(tmp_path, text)
    assert export() == before and not Node.objects.filter(name="n9").exists()
    assert App.objects.get(name="blog").description == "the blog"
