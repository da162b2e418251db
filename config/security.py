"""HTTP-level security helpers: the Content-Security-Policy per kind of response, and the client address.

* HTML pages (the admin) get ``settings.CONTENT_SECURITY_POLICY``: only the
  site's own scripts, styles and images, never framed.
* The browsable API docs (``/api/docs/``, drf-spectacular's Swagger UI served
  from the sidecar package, its start-up script a separate file) may load only
  the site's own scripts; Swagger UI sets inline styles, so styles alone may be inline.
* Everything else (the JSON API, problem+json errors, ``/metrics``) is never a
  document a browser should render: ``default-src 'none'; frame-ancestors 'none'``,
  as OWASP's REST Security Cheat Sheet recommends.
"""

from __future__ import annotations

from typing import Any

from csp.constants import NONE, SELF, UNSAFE_INLINE
from csp.middleware import CSPMiddleware, PolicyParts
from django.conf import settings
from django.http import HttpRequest
from django.http.response import HttpResponseBase

API_DOCS_PREFIX = "/api/docs/"

NON_HTML_POLICY: dict[str, Any] = {"default-src": [NONE], "frame-ancestors": [NONE]}
API_DOCS_POLICY: dict[str, Any] = {
    "default-src": [SELF],
    "script-src": [SELF],
    "style-src": [SELF, UNSAFE_INLINE],
    "img-src": [SELF, "data:"],
    "connect-src": [SELF],
    "object-src": [NONE],
    "base-uri": [NONE],
    "frame-ancestors": [NONE],
}


def _is_html(response: HttpResponseBase) -> bool:
    return str(response.get("Content-Type", "")).lower().startswith("text/html")


class ContentSecurityPolicyMiddleware(CSPMiddleware):
    """django-csp's middleware, choosing the policy by the kind of response (see the module doc)."""

    def get_policy_parts(
        self, request: HttpRequest, response: HttpResponseBase, report_only: bool = False
    ) -> PolicyParts:
        parts = super().get_policy_parts(request, response, report_only)
        if report_only or parts.config is not None:
            return parts  # a view chose its own policy (csp decorators)
        if request.path_info.startswith(API_DOCS_PREFIX):
            parts.config = API_DOCS_POLICY
        elif not _is_html(response):
            parts.config = NON_HTML_POLICY
        return parts


def client_ip(request: HttpRequest) -> str:
    """The client's address for lock-out (django-axes): ``REMOTE_ADDR``, or the address the
    outermost of ``TRUSTED_PROXY_COUNT`` reverse proxies saw, taken from the right of
    ``X-Forwarded-For`` (entries further left are client-supplied and could be forged)."""
    remote = str(request.META.get("REMOTE_ADDR", ""))
    proxies: int = getattr(settings, "TRUSTED_PROXY_COUNT", 0)
    if proxies <= 0:
        return remote
    hops = [hop.strip() for hop in str(request.META.get("HTTP_X_FORWARDED_FOR", "")).split(",") if hop.strip()]
    if len(hops) < proxies:
        return remote
    return hops[-proxies]
