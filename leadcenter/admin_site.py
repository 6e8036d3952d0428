from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.core.exceptions import ValidationError

from leadcenter import throttle


class ThrottledAuthenticationForm(AdminAuthenticationForm):
    """The admin's log-in form, refused without a password check while the username (from
    this address) or the address is locked out (leadcenter.throttle)."""

    error_messages = {
        **AdminAuthenticationForm.error_messages,
        "locked": "Too many failed log-in attempts. Try again in %(minutes)s minutes.",
    }

    def clean(self):
        username = self.cleaned_data.get("username") or ""
        ip = throttle.client_ip(self.request)
        if throttle.login_locked(username=username, ip=ip):
            self.request.login_locked = True
            raise ValidationError(
                self.error_messages["locked"],
                code="locked",
                params={"minutes": max(1, int(throttle.window().total_seconds() // 60))},
            )
        try:
            cleaned = super().clean()
        except ValidationError:
            throttle.login_failure_record(username=username, ip=ip)
            raise
        throttle.login_failures_clear(username=username, ip=ip)
        return cleaned


class LeadCenterAdminSite(admin.AdminSite):
    site_header = "LeadCenter"
    site_title = "LeadCenter"
    index_title = "Campaigns, contacts and delivery"
    login_form = ThrottledAuthenticationForm

    def login(self, request, extra_context=None):
        response = super().login(request, extra_context)
        if getattr(request, "login_locked", False):
            response.status_code = 429  # Too Many Requests
        return response
