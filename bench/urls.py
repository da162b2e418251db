"""The product's URLs plus ``/bench/noop``, the reference endpoint of the API workload."""

from __future__ import annotations

from typing import Any

from django.urls import path

from config import urls as product_urls

from .views import NoopView

handler400 = product_urls.handler400
handler403 = product_urls.handler403
handler404 = product_urls.handler404
handler500 = product_urls.handler500

urlpatterns: list[Any] = [
    path("bench/noop", NoopView.as_view(), name="bench-noop"),
    *product_urls.urlpatterns,
]
