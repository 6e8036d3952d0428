from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class LeadCenterAdminConfig(admin_apps.AdminConfig):
    default = False
    default_site = "leadcenter.admin_site.LeadCenterAdminSite"


class LeadCenterConfig(AppConfig):
    default = True
    name = "leadcenter"
    verbose_name = "LeadCenter"

    def ready(self) -> None:
        from leadcenter import checks  # noqa: F401  (registers the system checks)
