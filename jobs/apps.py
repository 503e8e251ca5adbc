from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "jobs"
    verbose_name = "Jobs"

    def ready(self):
        from jobs import projections  # noqa: F401 (registers the engine's projections: what is live where)
