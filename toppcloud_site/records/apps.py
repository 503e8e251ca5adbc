from django.apps import AppConfig


class RecordsConfig(AppConfig):
    name = "toppcloud_site.records"
    label = "records"
    verbose_name = "Records"

    def ready(self):
        from toppcloud_site import checks  # noqa: F401  (registers system checks)
        from toppcloud_site.records import audit
        from toppcloud_site.records.models import App, Certificate, ConfigValue, Location, Node, ServerGroup

        audit.connect([App, Location, ServerGroup, Node, ConfigValue, Certificate])
