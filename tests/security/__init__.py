"""The security suite of issue #7 (fuzzing and security). Where each promise is checked:

- permission matrix of every admin URL, action and side-effect page: test_permission_matrix.py
- side effects refuse GET; CSRF on every admin URL and form: test_csrf_and_get.py
- webhooks refuse a missing or wrong secret or signature; fuzzed bodies: test_webhooks.py
- tracking tokens cannot be forged, moved or re-pointed; fuzzed: test_tracking_tokens.py
- exported cells cannot run formulas: test_export_formulas.py
- templates escape contact data: test_escaping.py
- passwords never in a page, a log or an export: test_secrets.py (pages: the matrix's pass)
- log-in attempts throttled: test_login_throttle.py
- fuzzed imports, bounce mail, admin parameters: test_fuzz_imports.py, test_fuzz_bounces.py,
  test_fuzz_admin_params.py
- `manage.py check --deploy` clean with production settings: not repeated here; see
  leadcenter/tests/test_settings.py::test_production_settings_pass_check_deploy (and the
  warnings it expects for SQLite, plain http and the development key beside it).

HYPOTHESIS_PROFILE=full runs the fuzzers with ten times the examples (tests/security/fuzz.py);
the run ends with the number of inputs each fuzzer tried.
"""
