"""When is "scheduled_for" — turning the contract's time fields into one UTC instant.

Framework-free. The API passes the raw ``scheduled_for``/``time_zone``/policy values
here and gets back the instant to store plus the zone and wall time to show.

Input format (strict on purpose: a payment date must never be guessed)
----------------------------------------------------------------------
``YYYY-MM-DDTHH:MM[:SS[.f{1,6}]][Z|±HH:MM]`` — ISO 8601 extended / RFC 3339.

* ``T`` separator (``t`` too, as RFC 3339 allows); a space is rejected.
* Seconds may be omitted (``2027-03-14T02:30``, what HTML ``datetime-local`` sends);
  a fraction needs seconds and has 1-6 digits (microseconds at most; no truncation).
* Offsets ``Z``/``z`` or ``±HH:MM`` (``-00:00`` is read as UTC); no ``+0530`` or ``+05``.
* Rejected: date-only strings, week/ordinal dates, ``24:00``, leap second ``:60``,
  comma fractions, non-ASCII digits, surrounding whitespace.

Zones
-----
``time_zone`` is an exact, case-sensitive name from ``zoneinfo.available_timezones()``
(backward links such as ``US/Eastern`` included and kept as given; ``localtime``,
``posixrules`` and ``Factory`` excluded). ``""`` is an invalid zone, not a missing one.

Semantics
---------
* With an offset the value is an instant. ``time_zone``, if given, must be valid and
  is kept for display; without it the display zone is ``"UTC"``.
* Without an offset it is wall-clock time in ``time_zone`` (required). A wall time
  in a gap (clocks jump forward) is rejected or, with ``shift_forward``, moved forward
  by the gap's length; one in a fold (clocks go back) resolves to the earlier or later
  occurrence, or is rejected.

Output format
-------------
:func:`format_instant` renders UTC with ``Z``; :func:`format_local` renders the zone's
offset as ``±HH:MM`` (``+00:00`` for UTC; ``Z`` is reserved for the UTC instant fields).
Both omit the fraction at whole seconds, show milliseconds when the microseconds are
a multiple of 1000 (``.250``) and all six digits otherwise (``.250001``).
"""

from __future__ import annotations

import functools
import re
import zoneinfo
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

from common.error_codes import ErrorCode, ProblemError

__all__ = [
    "AMBIGUOUS_POLICIES",
    "NONEXISTENT_POLICIES",
    "ResolvedSchedule",
    "check_window",
    "format_instant",
    "format_local",
    "is_valid_time_zone",
    "resolve_schedule",
]

NONEXISTENT_POLICIES = ("reject", "shift_forward")
AMBIGUOUS_POLICIES = ("earlier", "later", "reject")

_MAX_INPUT_LENGTH = 64
# [0-9], not \d (which matches other scripts' digits); fullmatch, not $ (which allows a trailing newline).
_DATETIME = re.compile(
    r"(?P<year>[0-9]{4})-(?P<month>[0-9]{2})-(?P<day>[0-9]{2})[Tt]"
    r"(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2})"
    r"(?::(?P<second>[0-9]{2})(?:\.(?P<fraction>[0-9]{1,6}))?)?"
    r"(?P<offset>[Zz]|(?P<sign>[+-])(?P<off_hour>[0-9]{2}):(?P<off_minute>[0-9]{2}))?"
)

# Names zoneinfo lists that are not zones a person lives in: "localtime" is this
# machine's /etc/localtime, "posixrules" a zic artefact, "Factory" a placeholder.
_EXCLUDED_ZONES = frozenset({"localtime", "posixrules", "Factory"})

_FORMAT_EXAMPLE = "e.g. 2027-03-14T07:30:00Z, or 2027-03-14T03:30:00 together with time_zone"


@dataclass(frozen=True)
class ResolvedSchedule:
    """The instant to store (UTC), the zone to show it in, and its wall time there.

    Compare and store ``instant``. ``local`` is for display: by PEP 495, ``==`` between
    ``local`` and a datetime in another zone is always False for a wall time in a fold.
    """

    instant: datetime  # tzinfo is datetime.UTC
    time_zone: str  # IANA name; "UTC" when an offset was given without a zone
    local: datetime  # the same instant in time_zone (aware; fold set for the second occurrence)


@functools.cache
def _zone_names() -> frozenset[str]:
    # A whitelist, so ZoneInfo never sees "../x", absolute paths or other file tricks.
    return frozenset(zoneinfo.available_timezones()) - _EXCLUDED_ZONES


def is_valid_time_zone(name: object) -> bool:
    """True for an IANA zone name this service accepts (exact spelling, ``"UTC"`` included)."""
    return isinstance(name, str) and name in _zone_names()


def _load_zone(name: object) -> zoneinfo.ZoneInfo:
    if not isinstance(name, str) or name not in _zone_names():
        raise ProblemError.invalid(
            "time_zone",
            ErrorCode.INVALID_TIME_ZONE,
            "Unknown IANA time zone; use a name such as Europe/Berlin, America/New_York or UTC.",
        )
    return zoneinfo.ZoneInfo(name)


def _parse(value: object) -> datetime:
    """A naive (wall time) or aware (instant) datetime, or invalid_scheduled_for."""
    match = _DATETIME.fullmatch(value) if isinstance(value, str) and len(value) <= _MAX_INPUT_LENGTH else None
    if match is None:
        raise ProblemError.invalid(
            "scheduled_for",
            ErrorCode.INVALID_SCHEDULED_FOR,
            f"scheduled_for must be an ISO 8601 date and time ({_FORMAT_EXAMPLE}).",
        )
    fraction = match["fraction"] or ""
    tzinfo: timezone | None = None
    try:
        if match["offset"] is not None:
            tzinfo = UTC
            if match["sign"] is not None:
                off_hour, off_minute = int(match["off_hour"]), int(match["off_minute"])
                if off_hour > 23 or off_minute > 59:
                    raise ValueError("offset out of range")
                offset = timedelta(hours=off_hour, minutes=off_minute)
                tzinfo = timezone(-offset if match["sign"] == "-" else offset)
        return datetime(
            int(match["year"]),
            int(match["month"]),
            int(match["day"]),
            int(match["hour"]),
            int(match["minute"]),
            int(match["second"] or 0),
            int(fraction.ljust(6, "0")) if fraction else 0,
            tzinfo=tzinfo,
        )
    except ValueError:
        raise ProblemError.invalid(
            "scheduled_for",
            ErrorCode.INVALID_SCHEDULED_FOR,
            f"scheduled_for is not a valid calendar date and time ({_FORMAT_EXAMPLE}).",
        ) from None


def _check_policy(field_name: str, value: object, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ProblemError.invalid(
            field_name, ErrorCode.INVALID_TIME_POLICY, f"{field_name} must be one of: {', '.join(allowed)}."
        )
    return value


def resolve_schedule(
    scheduled_for: str,
    time_zone: str | None,
    on_nonexistent_time: str = "reject",
    on_ambiguous_time: str = "earlier",
) -> ResolvedSchedule:
    """Resolve the contract's ``scheduled_for``/``time_zone`` pair to one UTC instant.

    Raises :class:`ProblemError` (422) with field ``scheduled_for``, ``time_zone``,
    ``on_nonexistent_time`` or ``on_ambiguous_time``. Checks run in that order and the
    first failure is reported. Whether the instant is in the future is *not* checked
    here (see :func:`check_window`). ``None`` for a policy is not the default: the
    caller maps an absent field to the default.
    """
    parsed = _parse(scheduled_for)
    zone = _load_zone(time_zone) if time_zone is not None else None
    nonexistent = _check_policy("on_nonexistent_time", on_nonexistent_time, NONEXISTENT_POLICIES)
    ambiguous = _check_policy("on_ambiguous_time", on_ambiguous_time, AMBIGUOUS_POLICIES)

    try:
        if parsed.tzinfo is not None:
            instant = parsed.astimezone(UTC)
            shown = zone or zoneinfo.ZoneInfo("UTC")
            return ResolvedSchedule(instant, shown.key, instant.astimezone(shown))
        if zone is None:
            raise ProblemError.invalid(
                "time_zone",
                ErrorCode.TIME_ZONE_REQUIRED,
                "time_zone is required when scheduled_for has no UTC offset (it is then wall-clock time).",
            )
        instant = _resolve_wall_time(parsed, zone, nonexistent, ambiguous)
        return ResolvedSchedule(instant, zone.key, instant.astimezone(zone))
    except OverflowError:
        # Only at the ends of datetime's range (years 1 and 9999), where an offset
        # pushes the instant out of it.
        raise ProblemError.invalid(
            "scheduled_for", ErrorCode.INVALID_SCHEDULED_FOR, "scheduled_for is out of the supported range."
        ) from None


def _resolve_wall_time(wall: datetime, zone: zoneinfo.ZoneInfo, nonexistent: str, ambiguous: str) -> datetime:
    # PEP 495: for a wall time in a transition, fold=0 applies the offset in force
    # before it and fold=1 the one after; elsewhere both give the same instant.
    before = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    after = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    # The instants that really show this wall time in the zone (round trip).
    occurrences = sorted({u for u in (before, after) if u.astimezone(zone).replace(tzinfo=None) == wall})

    if not occurrences:
        # A gap. ``before`` is wall - old offset, which the zone shows as
        # wall + (new offset - old offset): moved forward by exactly the gap's length.
        if nonexistent == "reject":
            raise ProblemError.invalid(
                "scheduled_for",
                ErrorCode.NONEXISTENT_LOCAL_TIME,
                f"The local time {_wall(wall)} does not exist in {zone.key}: the clocks skip "
                f"{_duration(before - after)} there. Send on_nonexistent_time=shift_forward to move it "
                f"forward by the gap's length, to {format_local(before, zone.key)}.",
            )
        return before

    if len(occurrences) == 2:
        # A fold: the wall time happens twice.
        earlier, later = occurrences
        if ambiguous == "reject":
            raise ProblemError.invalid(
                "scheduled_for",
                ErrorCode.AMBIGUOUS_LOCAL_TIME,
                f"The local time {_wall(wall)} occurs twice in {zone.key} (at {_offset(earlier.astimezone(zone))} "
                f"and at {_offset(later.astimezone(zone))}). Send on_ambiguous_time=earlier or later to choose.",
            )
        return earlier if ambiguous == "earlier" else later

    return occurrences[0]


def check_window(instant: datetime, now: datetime, horizon: timedelta) -> None:
    """Raise unless ``now < instant <= now + horizon`` (both aware).

    "In the future" is strict: an instant equal to ``now`` is already in the past.
    The horizon's end is allowed. ``now`` should be the database clock.
    """
    if instant.tzinfo is None or now.tzinfo is None:
        raise ValueError("check_window needs aware datetimes")
    if instant <= now:
        raise ProblemError.invalid(
            "scheduled_for", ErrorCode.SCHEDULED_TIME_IN_PAST, "scheduled_for must be in the future."
        )
    latest = now + horizon
    if instant > latest:
        raise ProblemError.invalid(
            "scheduled_for",
            ErrorCode.SCHEDULED_TIME_TOO_FAR,
            f"scheduled_for must be at most {_duration(horizon)} ahead (no later than {format_instant(latest)}).",
        )


def format_instant(dt: datetime) -> str:
    """RFC 3339 in UTC with ``Z``: ``2027-03-14T07:30:00Z``, ``...:00.250Z``, ``...:00.250001Z``."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError("format_instant needs an aware datetime")
    return _wall(dt.astimezone(UTC)) + "Z"


def format_local(dt: datetime, time_zone: str) -> str:
    """The instant as wall time in ``time_zone`` with its offset: ``2027-03-14T03:30:00-04:00``.

    UTC renders as ``+00:00``. Offsets with seconds (local mean time, before ~1972 in a
    few zones) render as ``±HH:MM:SS``; no schedulable (future) instant has one.
    Raises ``ValueError`` for an aware-less datetime or an unknown zone (stored data, not input).
    """
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError("format_local needs an aware datetime")
    if not is_valid_time_zone(time_zone):
        raise ValueError("unknown IANA time zone")
    local = dt.astimezone(zoneinfo.ZoneInfo(time_zone))
    return _wall(local) + _offset(local)


def _wall(dt: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS`` plus the fraction rule; ignores tzinfo."""
    text = f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}"
    if dt.microsecond == 0:
        return text
    if dt.microsecond % 1000 == 0:
        return f"{text}.{dt.microsecond // 1000:03d}"
    return f"{text}.{dt.microsecond:06d}"


def _offset(dt: datetime) -> str:
    offset = dt.utcoffset()
    assert offset is not None  # callers pass aware datetimes
    sign = "-" if offset < timedelta(0) else "+"
    seconds = int(abs(offset).total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{sign}{hours:02d}:{minutes:02d}" + (f":{seconds:02d}" if seconds else "")


def _duration(delta: timedelta) -> str:
    """Human text for a positive duration: ``1 hour``, ``30 minutes``, ``730 days``."""
    total = int(delta.total_seconds())
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [
        f"{amount} {unit}{'' if amount == 1 else 's'}"
        for amount, unit in ((days, "day"), (hours, "hour"), (minutes, "minute"), (seconds, "second"))
        if amount
    ]
    return " ".join(parts) or "0 seconds"
