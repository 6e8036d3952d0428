"""The Sent emails list's rows, written directly.

Django's admin builds every cell of a list through its generic machinery (a field lookup that
raises for each computed column, escaping and lazy-string checks per cell): at 100 rows that
was most of the page, and it made a page of a rare filter (55 rows at 10,000 emails, 100 at a
million) cost in proportion to its rows. `sent_emails_result_list` gives the template exactly
the context of the admin's own `result_list` tag, with each row's cells written by
`message_cells` for MessageAdmin's columns. The markup is the admin's own (the tests compare
both, row by row); if list_display changes, the admin's own tag is used instead.
"""

from __future__ import annotations

import html
from typing import Any

from django import template
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.templatetags.admin_list import (
    ResultList,
    result_headers,
    result_hidden_fields,
)
from django.contrib.admin.templatetags.admin_list import (
    result_list as admin_result_list,
)
from django.contrib.admin.templatetags.base import InclusionAdminNode
from django.utils import formats, timezone
from django.utils.safestring import mark_safe
from django.utils.translation import gettext as _

register = template.Library()

COLUMNS = (
    "action_checkbox", "contact", "address", "campaign", "step_position", "account", "status",
    "last_event", "smtp_code", "smtp_reply",
)  # fmt: skip


def _escape(value: Any) -> str:
    # django.utils.html.conditional_escape without its lazy-string wrapper (same output:
    # Django's escape is html.escape).
    return value.__html__() if hasattr(value, "__html__") else html.escape(str(value))


def message_cells(cl: Any, message: Any, page: dict[str, Any]) -> str:
    """One row of the list, as the admin writes its cells one after the other."""
    admin, empty = cl.model_admin, page["empty"]

    def text(value: str) -> str:
        return _escape(value) if value.strip() else empty

    code, account = message.smtp_code, message.account
    status = message.status.strip() and message.status
    # MessageAdmin.action_checkbox, with the translated label read once per page.
    label = page["select"].format(_escape(str(message)))
    last_event = formats.localize(timezone.template_localtime(admin.last_event(message)))
    return (
        f'<td class="action-checkbox"><input type="checkbox" name="{ACTION_CHECKBOX_NAME}" '
        f'value="{_escape(str(message.pk))}" class="action-select" aria-label="{label}"></td>'
        f'<th class="field-contact"><a href="{_escape(cl.url_for_result(message))}">'
        f"{text(admin.contact(message))}</a></th>"
        f'<td class="field-address">{text(admin.address(message))}</td>'
        f'<td class="field-campaign">{text(admin.campaign(message))}</td>'
        f'<td class="field-step_position">'
        f"{_escape(formats.number_format(message.step.position))}</td>"
        f'<td class="field-account nowrap">{empty if account is None else _escape(account)}</td>'
        f'<td class="field-status">{_escape(page["statuses"].get(status, empty))}</td>'
        f'<td class="field-last_event nowrap">{_escape(last_event)}</td>'
        f'<td class="field-smtp_code">'
        f"{empty if code is None else _escape(formats.number_format(code))}</td>"
        f'<td class="field-smtp_reply">{text(admin.smtp_reply(message))}</td>'
    )


def sent_emails_result_list(cl: Any) -> dict[str, Any]:
    if (
        tuple(cl.list_display) != COLUMNS
        or list(cl.list_display_links or ()) != ["contact"]
        or getattr(cl, "formset", None)
        or cl.is_popup
        or cl.to_field
    ):
        return admin_result_list(cl)
    headers = list(result_headers(cl))
    status_field = cl.model._meta.get_field("status")
    page = {
        "empty": cl.model_admin.get_empty_value_display(),
        "statuses": {value: str(label) for value, label in status_field.flatchoices},
        "select": _("Select this object for an action - {}"),
    }
    return {
        "cl": cl,
        "result_hidden_fields": list(result_hidden_fields(cl)),
        "result_headers": headers,
        "num_sorted_fields": sum(1 for h in headers if h["sortable"] and h["sorted"]),
        # Each row as one piece: change_list_results.html writes a row's items one after the
        # other, so the page is the same, with one template variable per row instead of 11.
        "results": [
            ResultList(None, [mark_safe(message_cells(cl, m, page))])  # noqa: S308 - escaped
            for m in cl.result_list
        ],
    }


@register.tag(name="sent_emails_result_list")
def sent_emails_result_list_tag(parser: Any, token: Any) -> InclusionAdminNode:
    return InclusionAdminNode(
        parser,
        token,
        func=sent_emails_result_list,
        template_name="change_list_results.html",
        takes_context=False,
    )
