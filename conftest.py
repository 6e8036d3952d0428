import pytest


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # Tests log in many users; PBKDF2 at full strength would dominate the suite's time.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
