from django.contrib import admin
from django.urls import include, path

from leadcenter import views
from tracking.webhooks import anymail_urls

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("t/", include("tracking.urls")),
    # anymail's ESP webhooks: /anymail/<esp>/tracking/ and /anymail/<esp>/inbound/.
    path("anymail/", include(anymail_urls())),
    path("admin/", admin.site.urls),
]
