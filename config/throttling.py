"""API throttles (``REST_FRAMEWORK["DEFAULT_THROTTLE_CLASSES"]``): per user, per anonymous client, per address.

* ``UserRateThrottle`` (scope ``user``, ``THROTTLE_USER_RATE``): per authenticated user;
  an unauthenticated request counts against its address instead.
* ``AnonRateThrottle``: DRF's, for unauthenticated requests only, except that the
  client address is ``config.security.client_ip`` (``REMOTE_ADDR``, or the entry
  ``TRUSTED_PROXY_COUNT`` hops from the right of ``X-Forwarded-For``). DRF's own
  ``get_ident`` takes the whole ``X-Forwarded-For`` header when ``NUM_PROXIES`` is unset,
  so a client could dodge the anonymous throttle by sending a new made-up header with
  every request.
* ``ClientIpRateThrottle`` (scope ``ip``, ``THROTTLE_IP_RATE``): every request from one
  address, authenticated or not, whichever user or token it carries. It caps what one
  machine can do with many accounts or tokens (OWASP API4:2023).

Requests whose authentication fails are counted too (``throttle_failed_authentication``,
called by the problem+json exception handler): DRF checks throttles only after
authentication and permissions succeed, so floods of bad or missing tokens would
otherwise never be throttled.

The user and address throttles are sliding-window counters (the estimate is
``previous * (share of the window still to come) + current``, as in Cloudflare's and
nginx-style limiters): two counters per client instead of DRF's ``SimpleRateThrottle``
list with one timestamp per request in the window, which is read, unpickled, grown,
pickled and written back on every request — milliseconds per request once a busy user
or an address carrying many users has thousands in its window. The estimate errs by at
most the previous window's uneven spread; counter updates are atomic on Redis and in-process
caches (the file cache may undercount slightly under heavy concurrency). Each costs two
cache round trips per request: one read of both counters, one increment.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any, cast

from django.core.cache import cache as default_cache
from django.core.exceptions import ImproperlyConfigured
from rest_framework import exceptions, throttling
from rest_framework.request import Request
from rest_framework.settings import api_settings

from .security import client_ip

if TYPE_CHECKING:  # rest_framework.views imports this module (through its settings): no cycle at run time
    from rest_framework.views import APIView


class AnonRateThrottle(throttling.AnonRateThrottle):
    """Per address, for unauthenticated requests (``THROTTLE_ANON_RATE``)."""

    def get_ident(self, request: Request) -> str:
        return client_ip(request)


class SlidingWindowRateThrottle(throttling.BaseThrottle):
    """A sliding-window counter per client (see the module doc); subclasses name the scope and the client."""

    scope = ""
    cache = default_cache
    timer = staticmethod(time.time)

    def __init__(self) -> None:
        rates = api_settings.DEFAULT_THROTTLE_RATES
        if self.scope not in rates:
            raise ImproperlyConfigured(f"No default throttle rate set for '{self.scope}' scope")
        rate = cast("str | None", rates[self.scope])
        self.num_requests: int | None = None
        self.duration = 1
        if rate is not None:
            num, period = str(rate).split("/")
            self.num_requests = int(num)
            self.duration = {"s": 1, "m": 60, "h": 3600, "d": 86400}[period[0]]
        self._wait = 0.0

    def client(self, request: Request) -> str:
        raise NotImplementedError

    def _keys(self, ident: str, window: int) -> tuple[str, str]:
        return f"throttle_{self.scope}_{ident}_{window - 1}", f"throttle_{self.scope}_{ident}_{window}"

    def allow_request(self, request: Request, view: APIView) -> bool:
        if self.num_requests is None:
            return True
        ident = self.client(request)
        now = self.timer()
        window = int(now // self.duration)
        previous_key, current_key = self._keys(ident, window)
        counts: dict[str, Any] = self.cache.get_many([previous_key, current_key])
        previous, current = int(counts.get(previous_key) or 0), int(counts.get(current_key) or 0)
        remaining_share = 1.0 - (now - window * self.duration) / self.duration
        if previous * remaining_share + current + 1 > self.num_requests:
            self._wait = self._wait_for(now, window, previous, current)
            return False
        # Two cache operations per request: the read above, and add (first request of the window;
        # kept for two windows, as it is the "previous" counter during the next one) or incr.
        if current_key not in counts and self.cache.add(current_key, 1, timeout=2 * self.duration):
            return True
        try:
            self.cache.incr(current_key)
        except ValueError:  # expired or evicted since it was read
            self.cache.set(current_key, 1, timeout=2 * self.duration)
        return True

    def _wait_for(self, now: float, window: int, previous: int, current: int) -> float:
        """Seconds until the estimate leaves room for one more request (no more requests meanwhile)."""
        limit = self.num_requests or 0
        window_end = (window + 1) * self.duration
        if current + 1 > limit:
            # Only in a later window: there, the estimate is current * (share to come) + 0.
            share_to_come = max(0.0, (limit - 1) / current) if current else 0.0
            return window_end - now + self.duration * (1.0 - share_to_come)
        # previous * (1 - elapsed / duration) + current + 1 <= limit
        elapsed_needed = self.duration * (1.0 - (limit - current - 1) / previous)
        return max(0.0, window * self.duration + elapsed_needed - now)

    def wait(self) -> float | None:
        return math.ceil(self._wait * 1000) / 1000


class UserRateThrottle(SlidingWindowRateThrottle):
    """Per authenticated user (``THROTTLE_USER_RATE``); an unauthenticated request counts against its address."""

    scope = "user"

    def client(self, request: Request) -> str:
        user = request.user
        if user is not None and user.is_authenticated:
            return f"u{user.pk}"
        return f"a{client_ip(request) or 'unknown'}"


class ClientIpRateThrottle(SlidingWindowRateThrottle):
    """Every request from one client address (``THROTTLE_IP_RATE``), authenticated or not."""

    scope = "ip"

    def client(self, request: Request) -> str:
        return client_ip(request) or "unknown"


def throttle_failed_authentication(view: APIView, request: Request) -> exceptions.Throttled | None:
    """Count a request whose authentication failed against the view's throttles.

    DRF checks throttles after authentication and permissions, so a request with a
    bad or missing token is answered 401 without ever being counted. The exception
    handler calls this for such requests: they count as anonymous (per address, and
    against the address throttle), and once over the rate the answer is 429.
    """
    try:
        view.check_throttles(request)
    except exceptions.Throttled as throttled:
        return throttled
    return None
