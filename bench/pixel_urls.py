"""LeadCenter's URLs plus the pixel benchmark's baseline: a view that does nothing but answer
the same GIF with the same headers."""

from django.http import HttpRequest, HttpResponse
from django.urls import path

from leadcenter.urls import urlpatterns as leadcenter_urlpatterns
from tracking.views import GIF


def noop_pixel(request: HttpRequest, token: str) -> HttpResponse:
    response = HttpResponse(GIF, content_type="image/gif")
    response["Cache-Control"] = "no-store, no-cache, must-revalidate, max-age=0"
    response["Pragma"] = "no-cache"
    return response


urlpatterns = [path("noop/<str:token>.gif", noop_pixel), *leadcenter_urlpatterns]
