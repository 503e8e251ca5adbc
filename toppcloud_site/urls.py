from django.contrib import admin
from django.http import HttpResponse
from django.urls import path

from jobs import api


def health(request):
    return HttpResponse("ok\n", content_type="text/plain")


admin.autodiscover()  # settings use SimpleAdminConfig: the admin modules load with the URLs, not at start-up
admin.site.site_header = "toppcloud"
admin.site.site_title = "toppcloud"
admin.site.index_title = "Apps, nodes and jobs"

urlpatterns = [
    path("healthz", health),
    path("api/apps/<str:app>/tasks", api.tasks, name="api-tasks"),
    path("", admin.site.urls),
]
