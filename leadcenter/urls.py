from django.contrib import admin
from django.urls import include, path

from leadcenter import views

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("t/", include("tracking.urls")),
    path("admin/", admin.site.urls),
]
