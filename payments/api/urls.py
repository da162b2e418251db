"""``/api/v1/`` routes. No trailing slashes, as in the contract; a trailing-slash
variant is simply not found (404 problem+json), never redirected."""

from __future__ import annotations

from django.urls import URLPattern, path

from . import views

urlpatterns: list[URLPattern] = [
    path("payments", views.PaymentCollectionView.as_view(), name="payment-collection"),
    path("payments/<str:payment_id>", views.PaymentDetailView.as_view(), name="payment-detail"),
    path("payments/<str:payment_id>/cancel", views.PaymentCancelView.as_view(), name="payment-cancel"),
    path("payments/<str:payment_id>/events", views.PaymentEventsView.as_view(), name="payment-events"),
]
