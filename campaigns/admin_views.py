"""Campaign control pages of the admin: launch, pause, resume, terminate, preview, test email.

Every view with a side effect is POST-only and checks `campaigns.launch_campaign` on the
server; the buttons are hidden from people without it, but hiding is not the check.
"""

from __future__ import annotations

import re

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse
from django.views.decorators.http import require_POST

from campaigns import services
from campaigns.mail import RenderError, TemplateCache, compose
from campaigns.models import Campaign, CampaignRun, CampaignStep
from campaigns.smtp import AccountError
from contacts.models import Contact

LAUNCH_PERMISSION = "campaigns.launch_campaign"


def _require(request: HttpRequest, permission: str = LAUNCH_PERMISSION) -> None:
    if not request.user.has_perm(permission):
        raise PermissionDenied


def _back(campaign: Campaign) -> HttpResponseRedirect:
    return HttpResponseRedirect(reverse("admin:campaigns_campaign_change", args=[campaign.pk]))


@require_POST
def campaign_launch_view(request: HttpRequest, object_id: int) -> HttpResponse:
    _require(request)
    campaign = get_object_or_404(Campaign, pk=object_id)
    try:
        run = services.campaign_launch(campaign=campaign, started_by=request.user)
    except services.CampaignError as exc:
        messages.error(request, str(exc))
        return _back(campaign)
    messages.success(request, f"Run #{run.pk} started: the workers prepare the audience and send.")
    return HttpResponseRedirect(reverse("admin:campaigns_campaignrun_change", args=[run.pk]))


def _campaign_control(request: HttpRequest, object_id: int, service, done: str) -> HttpResponse:
    """Apply a pause or resume service to the campaign and say how it went."""
    _require(request)
    campaign = get_object_or_404(Campaign, pk=object_id)
    try:
        service(campaign=campaign)
    except services.CampaignError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, done.format(campaign=campaign))
    return _back(campaign)


@require_POST
def campaign_pause_view(request: HttpRequest, object_id: int) -> HttpResponse:
    return _campaign_control(
        request,
        object_id,
        services.campaign_pause,
        "{campaign} is paused: nothing more is sent until resumed.",
    )


@require_POST
def campaign_resume_view(request: HttpRequest, object_id: int) -> HttpResponse:
    return _campaign_control(
        request, object_id, services.campaign_resume, "{campaign} resumes where it stopped."
    )


@require_POST
def run_terminate_view(request: HttpRequest, object_id: int) -> HttpResponse:
    _require(request)
    run = get_object_or_404(CampaignRun, pk=object_id)
    try:
        cancelled = services.run_terminate(run=run)
    except services.CampaignError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Run #{run.pk} terminated; {cancelled} unsent emails cancelled.")
    return HttpResponseRedirect(reverse("admin:campaigns_campaignrun_change", args=[run.pk]))


def campaign_preview_view(
    request: HttpRequest, object_id: int, model_admin: admin.ModelAdmin
) -> HttpResponse:
    """Each step rendered for a chosen contact, with its headers (GET: no side effect), and a
    form to send a test email of a step (POST to campaign_test_email_view)."""
    campaign = get_object_or_404(Campaign, pk=object_id)
    if not model_admin.has_view_permission(request, campaign):
        raise PermissionDenied
    contact = None
    if contact_id := request.GET.get("contact", "").strip():
        # ASCII digits that fit a 64-bit id (str.isdigit() also takes "²": a 500).
        valid = re.fullmatch(r"[0-9]{1,18}", contact_id)
        contact = Contact.objects.filter(pk=contact_id).first() if valid else None
    if contact is None:
        contact = Contact.objects.filter(lists__campaigns=campaign).exclude(email="").first()
    account = campaign.accounts.filter(is_active=True).first() or campaign.accounts.first()
    previews = []
    cache = TemplateCache()
    for step in campaign.steps.order_by("position"):
        preview = {"step": step, "error": "", "headers": [], "html": "", "text": ""}
        if contact is None or account is None:
            preview["error"] = "Add a contact list with contacts and a sending account to preview."
        else:
            try:
                email = compose(
                    message_pk=0,
                    message_id="<preview@leadcenter>",
                    step=step,
                    contact=contact,
                    recipient_email=contact.email,
                    account=account,
                    track_opens=False,
                    track_clicks=False,
                    cache=cache,
                )
                preview.update(_split(email.data))
            except RenderError as exc:
                preview["error"] = str(exc)
        previews.append(preview)
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": Campaign._meta,
        "original": campaign,
        "title": f"Preview of {campaign}",
        "contact": contact,
        "account": account,
        "previews": previews,
        "accounts": campaign.accounts.all(),
        "can_send_test": request.user.has_perm(LAUNCH_PERMISSION),
    }
    return TemplateResponse(request, "admin/campaigns/campaign/preview.html", context)


def _split(data: bytes) -> dict:
    """Headers and decoded bodies of a built message, for showing it."""
    from email import message_from_bytes, policy

    parsed = message_from_bytes(data, policy=policy.default)
    html = parsed.get_body(("html",))
    text = parsed.get_body(("plain",))
    return {
        "headers": [(k, str(v)) for k, v in parsed.items() if not k.lower().startswith("content")],
        "html": html.get_content() if html else "",
        "text": text.get_content() if text else "",
    }


@require_POST
def campaign_test_email_view(request: HttpRequest, object_id: int) -> HttpResponse:
    _require(request)
    campaign = get_object_or_404(Campaign, pk=object_id)
    preview_url = reverse("admin:campaigns_campaign_preview", args=[campaign.pk])
    step = CampaignStep.objects.filter(campaign=campaign, pk=request.POST.get("step") or 0).first()
    account = campaign.accounts.filter(pk=request.POST.get("account") or 0).first()
    contact = Contact.objects.filter(pk=request.POST.get("contact") or 0).first()
    to = request.POST.get("to", "").strip()
    if step is None or account is None or contact is None or "@" not in to:
        messages.error(request, "Choose a step, an account, a contact and an address to send to.")
        return HttpResponseRedirect(preview_url)
    try:
        reply = services.step_send_test(step=step, contact=contact, to=to, account=account)
    except (RenderError, AccountError) as exc:
        messages.error(request, f"Test email not sent: {exc}")
    else:
        if reply.accepted:
            messages.success(request, f"Test email of step {step.position} sent to {to}.")
        else:
            messages.error(request, f"Test email refused: {reply.code or ''} {reply.text}")
    return HttpResponseRedirect(f"{preview_url}?contact={contact.pk}")
