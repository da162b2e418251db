"""A trivial DRF endpoint: the API's authentication, permission and throttling, no work."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView


@extend_schema(exclude=True)
class NoopView(APIView):
    def get(self, request: Request) -> Response:
        return Response({"ok": True})

    def post(self, request: Request) -> Response:
        # Parse the body as the payment endpoint does, then do nothing with it.
        return Response({"ok": True, "fields": len(request.data)})
