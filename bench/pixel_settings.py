"""Settings of the pixel benchmark's gunicorn: LeadCenter's, with bench.pixel_urls."""

from leadcenter.settings import *  # noqa: F403

ROOT_URLCONF = "bench.pixel_urls"
