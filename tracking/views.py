"""Open pixel, click redirect and unsubscribe page: small views that turn a request into an
InboundEvent. A forged or altered token records nothing and reveals nothing."""

from __future__ import annotations

import base64
import uuid

from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from campaigns.models import Message
from tracking import tokens
from tracking.buffer import event_submit
from tracking.events import InboundEvent, dedupe_key
from tracking.models import TrackingEvent
from tracking.services import event_record

E = TrackingEvent.Type
Source = TrackingEvent.Source
GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")


def _user_agent(request: HttpRequest) -> str:
    # From META: request.headers copies every header first, a tenth of the pixel's time.
    # A NUL cannot be stored in a PostgreSQL text column.
    return request.META.get("HTTP_USER_AGENT", "")[:500].replace("\x00", "")


@require_http_methods(["GET", "HEAD"])
def open_pixel(request: HttpRequest, token: str) -> HttpResponse:
    """Always a 1x1 GIF, whatever the token: a broken image would tell a forger something.
    The event carries the user agent as it came; whether it was a scanner is decided when it
    is recorded (tracking.buffer)."""
    message_pk = tokens.read_token(tokens.OPEN, token)
    if message_pk is not None:
        event_submit(
            InboundEvent(
                type=E.OPENED,
                source=Source.PIXEL,
                occurred_at=timezone.now(),
                dedupe_key=f"pixel:{uuid.uuid4().hex}",
                message_pk=message_pk,
                user_agent=_user_agent(request),
                is_machine=request.method == "HEAD",
            )
        )
    response = HttpResponse(GIF, content_type="image/gif")
    # never_cache's headers, written out: patching them in costs more than the rest of the view.
    response["Cache-Control"] = NEVER_CACHE
    response["Expires"] = "Thu, 01 Jan 1970 00:00:00 GMT"
    response["Pragma"] = "no-cache"
    return response


NEVER_CACHE = "max-age=0, no-cache, no-store, must-revalidate, private"


@never_cache
@require_http_methods(["GET", "HEAD"])
def click_redirect(request: HttpRequest, token: str) -> HttpResponse:
    """Redirects to exactly the URL the token signs, and records the click."""
    target = tokens.read_click_token(token)
    if target is None:
        raise Http404("This link is not valid.")
    event_submit(
        InboundEvent(
            type=E.CLICKED,
            source=Source.CLICK,
            occurred_at=timezone.now(),
            dedupe_key=f"click:{uuid.uuid4().hex}",
            message_pk=target.message_id,
            url=target.url,
            user_agent=_user_agent(request),
            is_machine=request.method == "HEAD",
        )
    )
    return HttpResponseRedirect(target.url)


@csrf_exempt  # RFC 8058: the one-click POST comes with no cookie; the signed token is the key
@never_cache
@require_http_methods(["GET", "POST"])
def unsubscribe(request: HttpRequest, token: str) -> HttpResponse:
    """GET shows the choice and changes nothing; POST unsubscribes, from the campaign's topic
    or from all mail; a one-click POST (body List-Unsubscribe=One-Click) from all at once."""
    message_pk = tokens.read_token(tokens.UNSUBSCRIBE, token)
    message = (
        Message.objects.select_related("recipient", "run__campaign__topic")
        .filter(pk=message_pk)
        .first()
        if message_pk is not None
        else None
    )
    if message is None:
        return render(request, "tracking/unsubscribe_invalid.html", status=404)
    topic = message.run.campaign.topic
    context = {"email": message.recipient.email, "topic": topic, "done": False}
    if request.method == "GET":
        return render(request, "tracking/unsubscribe.html", context)
    one_click = request.POST.get("List-Unsubscribe") == "One-Click"
    scope_all = one_click or request.POST.get("scope") != "topic" or topic is None
    event_record(
        InboundEvent(
            type=E.UNSUBSCRIBED,
            source=Source.UNSUBSCRIBE,
            occurred_at=timezone.now(),
            dedupe_key=dedupe_key("unsubscribe", message.pk, "all" if scope_all else "topic"),
            message_pk=message.pk,
            recipient=message.recipient.email,
            unsubscribe_all=scope_all,
            user_agent=_user_agent(request),
            detail="one-click (RFC 8058)" if one_click else ("all mail" if scope_all else "topic"),
        )
    )
    if one_click:
        return HttpResponse("Unsubscribed.", content_type="text/plain")
    return render(request, "tracking/unsubscribe.html", {**context, "done": True, "all": scope_all})
