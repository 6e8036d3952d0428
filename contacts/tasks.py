"""django-q2 tasks for contacts: thin, idempotent, taking ids (a task can run twice)."""

from __future__ import annotations

import time
from typing import Any

from contacts.imports import ImportJob
from contacts.resources import ContactResource

PROGRESS_EVERY = 0.5  # seconds between progress writes; the admin page polls every 2


def contact_import_run(job_id: str) -> dict[str, Any]:
    """Import an uploaded file of the admin (see contacts.admin_views): writes its progress
    and, when done, its report and rejects file next to the upload."""
    job = ImportJob.load(job_id)
    if job is None:
        return {"job": job_id, "state": "missing"}
    if job.status()["state"] == "done":
        # Run twice (a worker retried it): the import is idempotent, but done is done.
        return {"job": job_id, "state": "done"}
    job.set_status("running")
    last = 0.0

    def progress(stage: str, done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= PROGRESS_EVERY or done == total:
            last = now
            job.set_status("running", stage=stage, done=done, total=total)

    try:
        with job.open_source() as fh:
            report = ContactResource().import_file(
                fh, file_name=job.file_name, progress=progress, create_lists=job.create_lists
            )
    except Exception as exc:
        job.set_status("failed", error=f"{type(exc).__name__}: {exc}")
        raise
    job.save_report("result", report)
    job.set_status("done", stage="importing", done=report.good_rows, total=report.good_rows)
    job.delete_source()  # personal data; the report and rejects file are what is left to see
    return {
        "job": job_id,
        "state": "done",
        "created": report.created,
        "updated": report.updated,
        "unchanged": report.unchanged,
        "errors": report.error_count,
    }
