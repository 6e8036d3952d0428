from __future__ import annotations

from django import forms


class LiftForm(forms.Form):
    """Lifting a suppression entry: the reason is kept with it."""

    lift_reason = forms.CharField(
        label="Reason", max_length=255, help_text="Why this address may be emailed again."
    )
