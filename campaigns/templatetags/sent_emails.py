"""The Sent emails list's rows, written directly.

Django's admin builds every cell of a list through its generic machinery (a field lookup that
raises for each computed column, escaping and lazy-string checks per cell): at 100 rows that
was most of the page, and it made a page of a rare filter (55 rows at 10,000 emails, 100 at a
million) cost in proportion to its rows. `sent_emails_result_list` gives the template exactly
the context of the admin's own `result_list` tag, with each row's cells written by
`message_cells` for MessageAdmin's columns. The markup is the admin's own (the tests compare
both, cell by cell); if list_display changes, the admin's own tag is used instead.
"""

from __future__ import annotations

from typing import Any

from django import template
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
from django.utils.html import conditional_escape, escape
from django.utils.safestring import SafeString, mark_safe

register = template.Library()

COLUMNS = (
    "action_checkbox", "contact", "address", "campaign", "step_position", "account", "status",
    "last_event", "smtp_code", "smtp_reply",
)  # fmt: skip


def _cell(tag: str, classes: str, html: str) -> SafeString:
    return mark_safe(f'<{tag} class="{classes}">{html}</{tag}>')  # noqa: S308 - escaped below


def message_cells(cl: Any, message: Any, empty: str, statuses: dict[str, str]) -> list[str]:
    admin = cl.model_admin

    def text(value: str) -> str:
        return conditional_escape(value) if value.strip() else empty

    code = message.smtp_code
    account = message.account
    status = message.status.strip() and message.status
    return [
        _cell("td", "action-checkbox", admin.action_checkbox(message)),
        _cell(
            "th",
            "field-contact",
            f'<a href="{escape(cl.url_for_result(message))}">{text(admin.contact(message))}</a>',
        ),
        _cell("td", "field-address", text(admin.address(message))),
        _cell("td", "field-campaign", text(admin.campaign(message))),
        _cell("td", "field-step_position", escape(formats.number_format(message.step.position))),
        _cell("td", "field-account nowrap", empty if account is None else escape(str(account))),
        _cell("td", "field-status", conditional_escape(statuses.get(status, empty))),
        _cell(
            "td",
            "field-last_event nowrap",
            escape(formats.localize(timezone.template_localtime(admin.last_event(message)))),
        ),
        _cell("td", "field-smtp_code", empty if code is None else formats.number_format(code)),
        _cell("td", "field-smtp_reply", text(admin.smtp_reply(message))),
    ]


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
    empty = cl.model_admin.get_empty_value_display()
    status_field = cl.model._meta.get_field("status")
    statuses = {value: str(label) for value, label in status_field.flatchoices}
    return {
        "cl": cl,
        "result_hidden_fields": list(result_hidden_fields(cl)),
        "result_headers": headers,
        "num_sorted_fields": sum(1 for h in headers if h["sortable"] and h["sorted"]),
        "results": [
            ResultList(None, message_cells(cl, m, empty, statuses)) for m in cl.result_list
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
