from django.contrib import admin
from django.http import HttpResponse
from django.urls import path

from jobs import api, dashboard


def health(request):
    return HttpResponse("ok\n", content_type="text/plain")


admin.autodiscover()  # settings use SimpleAdminConfig: the admin modules load with the URLs, not at start-up
admin.site.site_header = "toppcloud"
admin.site.site_title = "toppcloud"
admin.site.index_title = "Apps, nodes and jobs"
admin.site.index_template = "admin/dashboard.html"


def index(request):
    """The admin's index with the dashboard (jobs/dashboard.py) in its context."""
    return admin.site.index(request, extra_context=dashboard.context(request.user))


urlpatterns = [
    path("healthz", health),
    path("api/apps/<str:app>/tasks", api.tasks, name="api-tasks"),
    path("", admin.site.admin_view(index)),  # before the admin's own index, which keeps its name (admin:index)
    path("", admin.site.urls),
]
