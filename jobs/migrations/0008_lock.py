"""One lock table: RunLock becomes Lock, and each AppLock row becomes the Lock `app:APP` (same job, same time)."""

from django.db import migrations


def app_locks_to_keys(apps, schema_editor):
    AppLock, Lock = apps.get_model("jobs", "AppLock"), apps.get_model("jobs", "Lock")
    for lock in AppLock.objects.select_related("app"):
        Lock.objects.update_or_create(key=f"app:{lock.app.name}",
                                      defaults={"job_id": lock.job_id, "taken_at": lock.taken_at})


def keys_to_app_locks(apps, schema_editor):
    AppLock, Lock = apps.get_model("jobs", "AppLock"), apps.get_model("jobs", "Lock")
    App = apps.get_model("records", "App")
    names = dict(App.objects.values_list("name", "pk"))
    for lock in Lock.objects.filter(key__startswith="app:"):
        app_id = names.get(lock.key[len("app:"):])
        if app_id is not None:
            AppLock.objects.update_or_create(app_id=app_id,
                                             defaults={"job_id": lock.job_id, "taken_at": lock.taken_at})
    Lock.objects.filter(key__startswith="app:").delete()


class Migration(migrations.Migration):

    dependencies = [
        ('jobs', '0007_seal'),
        ('records', '0002_release_app_ini_release_size_and_more'),
    ]

    operations = [
        migrations.RenameModel('RunLock', 'Lock'),
        migrations.RunPython(app_locks_to_keys, keys_to_app_locks),
        migrations.DeleteModel('AppLock'),
    ]
