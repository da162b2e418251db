"""Specification of payments.time_semantics: how scheduled_for + time_zone become an instant.

Exact cases pin the contract's examples; the properties check every IANA zone
against an oracle that knows nothing about PEP 495 folds: it searches the UTC
instants that show a wall time, and bisects to find a gap's edges.
"""

from __future__ import annotations

import os
import zoneinfo
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from common.error_codes import ErrorCode, ProblemError
from payments.time_semantics import (
    ResolvedSchedule,
    check_window,
    format_instant,
    format_local,
    is_valid_time_zone,
    resolve_schedule,
)

NEW_YORK = "America/New_York"
LORD_HOWE = "Australia/Lord_Howe"
ZONES = sorted(name for name in zoneinfo.available_timezones() if is_valid_time_zone(name))
# Raise PROPERTY_EXAMPLES (e.g. to 20000) for a deeper hunt; the default keeps the file under ~10 s.
PROPERTY_SETTINGS = settings(
    max_examples=int(os.environ.get("PROPERTY_EXAMPLES", "600")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)


def problem(
    scheduled_for: object, time_zone: object = None, nonexistent: object = "reject", ambiguous: object = "earlier"
) -> ProblemError:
    with pytest.raises(ProblemError) as caught:
        resolve_schedule(scheduled_for, time_zone, nonexistent, ambiguous)  # type: ignore[arg-type]
    assert caught.value.status == 422
    assert len(caught.value.errors) == 1
    assert caught.value.errors[0].code == caught.value.code
    return caught.value


# --- The oracle ------------------------------------------------------------------


def wall_of(instant: datetime, zone: zoneinfo.ZoneInfo) -> datetime:
    return instant.astimezone(zone).replace(tzinfo=None, fold=0)


def offset_at(instant: datetime, zone: zoneinfo.ZoneInfo) -> timedelta:
    offset = instant.astimezone(zone).utcoffset()
    assert offset is not None
    return offset


def offsets_near(wall: datetime, zone: zoneinfo.ZoneInfo) -> set[timedelta]:
    # Every offset the zone uses within two days of the wall time, sampled each half hour.
    centre = wall.replace(tzinfo=UTC)
    return {offset_at(centre + timedelta(minutes=30 * k), zone) for k in range(-96, 97)}


def occurrences(wall: datetime, zone: zoneinfo.ZoneInfo) -> list[datetime]:
    """The UTC instants that show ``wall`` in ``zone``: 0 in a gap, 2 in a fold."""
    candidates = {(wall - offset).replace(tzinfo=UTC) for offset in offsets_near(wall, zone)}
    return sorted(u for u in candidates if wall_of(u, zone) == wall)


def gap_offsets(wall: datetime, zone: zoneinfo.ZoneInfo) -> tuple[timedelta, timedelta]:
    """The offsets in force just before and just after the gap that swallows ``wall``."""
    offsets = offsets_near(wall, zone)
    low = (wall - max(offsets)).replace(tzinfo=UTC)  # shows a wall time < wall
    high = (wall - min(offsets)).replace(tzinfo=UTC)  # shows a wall time > wall
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        middle = middle.replace(microsecond=0)  # transitions happen on whole seconds
        if middle <= low:
            middle = low + timedelta(seconds=1)
        if wall_of(middle, zone) < wall:
            low = middle
        else:
            high = middle
    return offset_at(low, zone), offset_at(high, zone)


def next_transition(zone: zoneinfo.ZoneInfo, start: datetime) -> tuple[datetime, timedelta, timedelta] | None:
    """The first offset change within ~400 days of ``start``: (instant, offset before, offset after)."""
    step = timedelta(days=7)
    previous, previous_offset = start, offset_at(start, zone)
    for _ in range(58):
        current = previous + step
        current_offset = offset_at(current, zone)
        if current_offset != previous_offset:
            low, high = previous, current
            while high - low > timedelta(seconds=1):
                middle = (low + (high - low) / 2).replace(microsecond=0)
                if middle <= low:
                    middle = low + timedelta(seconds=1)
                if offset_at(middle, zone) == previous_offset:
                    low = middle
                else:
                    high = middle
            return high, offset_at(low, zone), offset_at(high, zone)
        previous, previous_offset = current, current_offset
    return None


instants_1970_2100 = st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2100, 12, 30)).map(
    lambda naive: naive.replace(tzinfo=UTC)
)


@st.composite
def walls_near_transitions(draw: st.DrawFn) -> tuple[str, datetime]:
    """A zone and a wall time, most of them in or next to a gap or a fold."""
    name = draw(st.sampled_from(ZONES))
    zone = zoneinfo.ZoneInfo(name)
    start = draw(instants_1970_2100)
    transition = next_transition(zone, start) if draw(st.integers(0, 4)) else None
    if transition is None:
        return name, wall_of(start, zone)
    at, before, after = transition
    spread = abs(after - before) + timedelta(minutes=30)
    return name, (at + before).replace(tzinfo=None) + draw(st.timedeltas(-spread, spread))


@st.composite
def instants_near_transitions(draw: st.DrawFn) -> tuple[str, datetime]:
    name = draw(st.sampled_from(ZONES))
    zone = zoneinfo.ZoneInfo(name)
    start = draw(instants_1970_2100)
    transition = next_transition(zone, start) if draw(st.integers(0, 4)) else None
    if transition is None:
        return name, start
    at, before, after = transition
    spread = abs(after - before) + timedelta(minutes=30)
    return name, at + draw(st.timedeltas(-spread, spread))


# --- Instants: Z or an offset ------------------------------------------------------


def test_it_reads_a_z_time_as_an_instant_shown_in_utc() -> None:
    # Given an instant with Z and no zone
    # When it is resolved
    resolved = resolve_schedule("2027-03-14T07:30:00Z", None)
    # Then it is that instant, shown in UTC
    assert resolved == ResolvedSchedule(utc(2027, 3, 14, 7, 30), "UTC", resolved.local)
    assert resolved.instant.tzinfo is UTC
    assert format_local(resolved.local, resolved.time_zone) == "2027-03-14T07:30:00+00:00"


def test_it_converts_an_offset_time_to_utc() -> None:
    resolved = resolve_schedule("2027-03-14T08:30:00+01:00", None)
    assert resolved.instant == utc(2027, 3, 14, 7, 30)
    assert resolved.time_zone == "UTC"
    assert resolved.local.utcoffset() == timedelta(0)


def test_it_keeps_the_given_zone_for_display_when_the_time_has_an_offset() -> None:
    # Given an instant plus the zone the user thinks in
    resolved = resolve_schedule("2027-03-14T07:30:00Z", NEW_YORK)
    # Then the instant is unchanged and the local time is the New York wall time
    assert resolved.instant == utc(2027, 3, 14, 7, 30)
    assert resolved.time_zone == NEW_YORK
    assert format_local(resolved.local, NEW_YORK) == "2027-03-14T03:30:00-04:00"


def test_an_offset_makes_a_fold_time_unambiguous_so_the_policy_does_not_apply() -> None:
    # Given 01:30 New York on the night it happens twice, but with the -05:00 offset
    resolved = resolve_schedule("2027-11-07T01:30:00-05:00", NEW_YORK, "reject", "reject")
    # Then it is the second 01:30, without an ambiguity error
    assert resolved.instant == utc(2027, 11, 7, 6, 30)
    assert resolved.local.fold == 1


def test_it_validates_the_zone_even_when_the_time_has_an_offset() -> None:
    error = problem("2027-03-14T07:30:00Z", "Mars/Olympus_Mons")
    assert error.code == ErrorCode.INVALID_TIME_ZONE
    assert error.errors[0].field == "time_zone"


def test_it_accepts_lowercase_t_and_z_as_rfc_3339_allows() -> None:
    assert resolve_schedule("2027-03-14t07:30:00z", None).instant == utc(2027, 3, 14, 7, 30)


def test_it_reads_minus_zero_offset_as_utc() -> None:
    assert resolve_schedule("2027-03-14T07:30:00-00:00", None).instant == utc(2027, 3, 14, 7, 30)


@pytest.mark.parametrize(
    ("text", "microsecond"),
    [
        ("2027-03-14T07:30:00.25Z", 250_000),
        ("2027-03-14T07:30:00.250Z", 250_000),
        ("2027-03-14T07:30:00.000001Z", 1),
        ("2027-03-14T07:30:00.123456Z", 123_456),
        ("2027-03-14T07:30:00.5+02:00", 500_000),
    ],
)
def test_it_keeps_microseconds(text: str, microsecond: int) -> None:
    assert resolve_schedule(text, None).instant.microsecond == microsecond


def test_it_accepts_a_time_without_seconds() -> None:
    # Given what an HTML datetime-local input sends
    resolved = resolve_schedule("2027-03-14T09:15", "Europe/Berlin")
    assert resolved.instant == utc(2027, 3, 14, 8, 15)


# --- Wall times ----------------------------------------------------------------------


def test_it_reads_a_time_without_offset_as_wall_time_in_the_zone() -> None:
    resolved = resolve_schedule("2027-06-01T09:00:00", "Europe/Berlin")
    assert resolved.instant == utc(2027, 6, 1, 7, 0)
    assert resolved.time_zone == "Europe/Berlin"
    assert resolved.local.replace(tzinfo=None) == datetime(2027, 6, 1, 9, 0)


def test_it_requires_a_zone_for_a_wall_time() -> None:
    error = problem("2027-03-14T07:30:00", None)
    assert error.code == ErrorCode.TIME_ZONE_REQUIRED
    assert error.errors[0].field == "time_zone"


def test_it_accepts_utc_as_a_zone_name() -> None:
    assert resolve_schedule("2027-03-14T07:30:00", "UTC").instant == utc(2027, 3, 14, 7, 30)
    assert resolve_schedule("2027-03-14T07:30:00", "Etc/UTC").time_zone == "Etc/UTC"


# --- DST gaps ---------------------------------------------------------------------------


def test_it_rejects_a_time_in_the_dst_gap_by_default() -> None:
    # Given 02:30 on the night New York's clocks jump from 02:00 to 03:00
    # When it is resolved with the default policy
    error = problem("2027-03-14T02:30:00", NEW_YORK)
    # Then it is refused as nonexistent, with a hint at shift_forward
    assert error.code == ErrorCode.NONEXISTENT_LOCAL_TIME
    assert error.errors[0].field == "scheduled_for"
    assert "shift_forward" in error.detail
    assert "2027-03-14T03:30:00-04:00" in error.detail


def test_it_shifts_a_time_in_the_dst_gap_forward() -> None:
    # Given 02:30 in New York's 02:00->03:00 gap and the shift_forward policy
    resolved = resolve_schedule("2027-03-14T02:30:00", NEW_YORK, on_nonexistent_time="shift_forward")
    # Then it moves forward by the gap's length: 03:30 EDT, 07:30Z
    assert resolved.instant == utc(2027, 3, 14, 7, 30)
    assert format_local(resolved.local, NEW_YORK) == "2027-03-14T03:30:00-04:00"


def test_it_shifts_a_time_in_a_thirty_minute_gap_by_thirty_minutes() -> None:
    # Given Lord Howe Island, whose clocks jump 02:00 -> 02:30 on 2027-10-03
    resolved = resolve_schedule("2027-10-03T02:15:00", LORD_HOWE, on_nonexistent_time="shift_forward")
    # Then 02:15 becomes 02:45 at +11:00
    assert format_local(resolved.instant, LORD_HOWE) == "2027-10-03T02:45:00+11:00"
    assert resolved.instant == utc(2027, 10, 2, 15, 45)
    assert problem("2027-10-03T02:15:00", LORD_HOWE).code == ErrorCode.NONEXISTENT_LOCAL_TIME


def test_it_shifts_a_time_in_a_two_hour_gap_by_two_hours() -> None:
    # Given Antarctica/Troll, which jumps from +00:00 to +02:00 (01:00 -> 03:00)
    resolved = resolve_schedule("2027-03-28T02:00:00", "Antarctica/Troll", on_nonexistent_time="shift_forward")
    assert format_local(resolved.instant, "Antarctica/Troll") == "2027-03-28T04:00:00+02:00"


def test_it_shifts_a_time_in_a_skipped_day_by_a_whole_day() -> None:
    # Given Samoa, which skipped 2011-12-30 when it moved across the date line (not DST)
    resolved = resolve_schedule("2011-12-30T12:00:00", "Pacific/Apia", on_nonexistent_time="shift_forward")
    # Then noon on the missing day becomes noon the next day
    assert format_local(resolved.instant, "Pacific/Apia") == "2011-12-31T12:00:00+14:00"


def test_the_first_instant_after_a_gap_exists() -> None:
    # 03:00 is the first wall time after New York's gap: it exists and is not shifted
    resolved = resolve_schedule("2027-03-14T03:00:00", NEW_YORK)
    assert resolved.instant == utc(2027, 3, 14, 7, 0)


# --- DST folds ---------------------------------------------------------------------------


def test_it_takes_the_earlier_occurrence_of_a_fold_time_by_default() -> None:
    # Given 01:30 on the night New York's clocks go back from 02:00 to 01:00
    resolved = resolve_schedule("2027-11-07T01:30:00", NEW_YORK)
    # Then it is the first 01:30 (EDT, -04:00)
    assert resolved.instant == utc(2027, 11, 7, 5, 30)
    assert format_local(resolved.local, NEW_YORK) == "2027-11-07T01:30:00-04:00"


def test_it_takes_the_later_occurrence_of_a_fold_time_when_asked() -> None:
    resolved = resolve_schedule("2027-11-07T01:30:00", NEW_YORK, on_ambiguous_time="later")
    assert resolved.instant == utc(2027, 11, 7, 6, 30)
    assert format_local(resolved.local, NEW_YORK) == "2027-11-07T01:30:00-05:00"


def test_it_rejects_a_fold_time_when_asked() -> None:
    error = problem("2027-11-07T01:30:00", NEW_YORK, "reject", "reject")
    assert error.code == ErrorCode.AMBIGUOUS_LOCAL_TIME
    assert error.errors[0].field == "scheduled_for"
    assert "-04:00" in error.detail
    assert "-05:00" in error.detail


def test_it_resolves_a_thirty_minute_fold() -> None:
    # Given Lord Howe, where 01:30-02:00 happens twice on 2027-04-04 (+11:00, then +10:30)
    earlier = resolve_schedule("2027-04-04T01:45:00", LORD_HOWE, on_ambiguous_time="earlier")
    later = resolve_schedule("2027-04-04T01:45:00", LORD_HOWE, on_ambiguous_time="later")
    # Then the two occurrences are 30 minutes apart, with those offsets
    assert format_local(earlier.instant, LORD_HOWE) == "2027-04-04T01:45:00+11:00"
    assert format_local(later.instant, LORD_HOWE) == "2027-04-04T01:45:00+10:30"
    assert later.instant - earlier.instant == timedelta(minutes=30)
    assert problem("2027-04-04T01:45:00", LORD_HOWE, "reject", "reject").code == ErrorCode.AMBIGUOUS_LOCAL_TIME
    # And 01:15 is before the fold: it happens once
    assert resolve_schedule("2027-04-04T01:15:00", LORD_HOWE, "reject", "reject").instant == utc(2027, 4, 3, 14, 15)


# --- Bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",
        "tomorrow",
        "2027-03-14",  # date only
        "2027-03-14T",
        "2027-03-14T07",
        "2027-03-14 07:30:00Z",  # space separator
        "20270314T073000Z",  # ISO basic format
        "2027-W11-7T07:30:00Z",  # week date
        "2027-073T07:30:00Z",  # ordinal date
        "2027-03-14T07:30:00+0100",
        "2027-03-14T07:30:00+01",
        "2027-03-14T07:30:00.1234567Z",  # beyond microseconds
        "2027-03-14T07:30:00.Z",
        "2027-03-14T07:30:00,5Z",
        "2027-03-14T07:30.5Z",  # fraction without seconds
        "2027-02-30T10:00:00Z",
        "2027-13-01T10:00:00Z",
        "2027-03-14T24:00:00Z",
        "2027-03-14T23:59:60Z",  # leap second
        "2027-03-14T07:30:00+24:00",
        "2027-03-14T07:30:00+01:60",
        "2027-03-14T07:30:00Z\n",
        " 2027-03-14T07:30:00Z",
        "2027-03-14T07:30:00 Z",
        "\uff12\uff10\uff12\uff17-03-14T07:30:00Z",  # full-width digits
        "2027-03-14T07:30:00Z[Europe/Berlin]",
        "0001-01-01T00:00:00+01:00",  # before datetime.min once converted to UTC
        "2027-03-14T07:30:00Z" + "0" * 100,
    ],
)
def test_it_rejects_what_is_not_a_strict_iso_8601_date_time(text: str) -> None:
    error = problem(text, "Europe/Berlin")
    assert error.code == ErrorCode.INVALID_SCHEDULED_FOR
    assert error.errors[0].field == "scheduled_for"
    # The message is one of a few fixed texts: it never repeats the submitted value
    assert error.detail in {
        problem("x").detail,
        problem("2027-02-30T10:00:00Z").detail,
        problem("0001-01-01T00:00:00+01:00").detail,
    }


@pytest.mark.parametrize("value", [None, 1773473400, 17.5, ["2027-03-14T07:30:00Z"], b"2027-03-14T07:30:00Z"])
def test_it_rejects_a_scheduled_for_that_is_not_a_string(value: object) -> None:
    assert problem(value, "UTC").code == ErrorCode.INVALID_SCHEDULED_FOR


@pytest.mark.parametrize(
    "name",
    [
        "Mars/Olympus_Mons",
        "america/new_york",  # zone names are case-sensitive
        "../../../../etc/passwd",
        "/usr/share/zoneinfo/UTC",
        "localtime",  # this machine's zone, not an IANA name
        "Factory",
        "posixrules",
        "",
        "UTC ",
        "+05:00",
    ],
)
def test_it_rejects_an_unknown_zone_without_echoing_it(name: str) -> None:
    # Given a zone that is not a known IANA name (or a path trick)
    error = problem("2027-03-14T07:30:00", name)
    # Then the error says so, without repeating the submitted value
    assert error.code == ErrorCode.INVALID_TIME_ZONE
    assert error.errors[0].field == "time_zone"
    assert error.detail.startswith("Unknown IANA time zone")
    assert error.detail == problem("2027-03-14T07:30:00", "Some/Other").detail


@pytest.mark.parametrize("value", [123, ["UTC"], b"UTC"])
def test_it_rejects_a_zone_that_is_not_a_string(value: object) -> None:
    assert problem("2027-03-14T07:30:00", value).code == ErrorCode.INVALID_TIME_ZONE


@pytest.mark.parametrize(
    ("nonexistent", "ambiguous", "field"),
    [
        ("shift_backward", "earlier", "on_nonexistent_time"),
        ("REJECT", "earlier", "on_nonexistent_time"),
        (None, "earlier", "on_nonexistent_time"),
        ("reject", "first", "on_ambiguous_time"),
        ("reject", "", "on_ambiguous_time"),
        ("reject", 1, "on_ambiguous_time"),
    ],
)
def test_it_rejects_an_unknown_policy_even_when_it_would_not_matter(
    nonexistent: object, ambiguous: object, field: str
) -> None:
    # Given an ordinary instant, which needs no policy, and a misspelt policy
    error = problem("2027-03-14T07:30:00Z", None, nonexistent, ambiguous)
    # Then the policy is still refused, naming the field
    assert error.code == ErrorCode.INVALID_TIME_POLICY
    assert error.errors[0].field == field


def test_it_reports_the_scheduled_for_error_first() -> None:
    assert problem("nope", "Mars/Base", "x", "y").errors[0].field == "scheduled_for"


# --- Formatting -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("instant", "text"),
    [
        (utc(2027, 3, 14, 7, 30), "2027-03-14T07:30:00Z"),
        (utc(2027, 3, 14, 7, 30, 0, 250_000), "2027-03-14T07:30:00.250Z"),
        (utc(2027, 3, 14, 7, 30, 0, 1_000), "2027-03-14T07:30:00.001Z"),
        (utc(2027, 3, 14, 7, 30, 0, 250_001), "2027-03-14T07:30:00.250001Z"),
        (utc(2027, 3, 14, 7, 30, 0, 1), "2027-03-14T07:30:00.000001Z"),
        (datetime(2027, 3, 14, 3, 30, tzinfo=timezone(timedelta(hours=-4))), "2027-03-14T07:30:00Z"),
        (datetime(2027, 3, 14, 3, 30, tzinfo=zoneinfo.ZoneInfo(NEW_YORK)), "2027-03-14T07:30:00Z"),
    ],
)
def test_it_formats_instants_in_utc_with_z_and_a_fraction_only_when_needed(instant: datetime, text: str) -> None:
    assert format_instant(instant) == text


@pytest.mark.parametrize(
    ("instant", "zone", "text"),
    [
        (utc(2027, 3, 14, 7, 30), NEW_YORK, "2027-03-14T03:30:00-04:00"),
        (utc(2027, 3, 14, 7, 30), "UTC", "2027-03-14T07:30:00+00:00"),
        (utc(2027, 3, 14, 7, 30, 0, 250_000), "Asia/Kolkata", "2027-03-14T13:00:00.250+05:30"),
        (utc(2027, 1, 1), "Asia/Kathmandu", "2027-01-01T05:45:00+05:45"),
        # Liberia kept local mean time, -00:44:30, until 1972: RFC 3339 cannot say that
        (utc(1971, 1, 1), "Africa/Monrovia", "1970-12-31T23:15:30-00:44:30"),
    ],
)
def test_it_formats_local_times_with_the_zone_offset(instant: datetime, zone: str, text: str) -> None:
    assert format_local(instant, zone) == text


def test_formatting_refuses_naive_datetimes_and_unknown_zones() -> None:
    with pytest.raises(ValueError, match="aware"):
        format_instant(datetime(2027, 3, 14, 7, 30))
    with pytest.raises(ValueError, match="aware"):
        format_local(datetime(2027, 3, 14, 7, 30), "UTC")
    with pytest.raises(ValueError, match="unknown"):
        format_local(utc(2027, 3, 14, 7, 30), "Mars/Base")


# --- The scheduling window --------------------------------------------------------------------

NOW = utc(2027, 1, 1, 12, 0)
TWO_YEARS = timedelta(days=730)


def test_the_window_accepts_an_instant_between_now_and_the_horizon() -> None:
    check_window(NOW + timedelta(microseconds=1), NOW, TWO_YEARS)
    check_window(NOW + TWO_YEARS, NOW, TWO_YEARS)  # the horizon itself is allowed


@pytest.mark.parametrize("instant", [NOW, NOW - timedelta(microseconds=1), utc(2000, 1, 1)])
def test_the_window_rejects_now_and_the_past(instant: datetime) -> None:
    # "In the future" is strict: the current instant is already too late
    with pytest.raises(ProblemError) as caught:
        check_window(instant, NOW, TWO_YEARS)
    assert caught.value.code == ErrorCode.SCHEDULED_TIME_IN_PAST
    assert caught.value.errors[0].field == "scheduled_for"


def test_the_window_rejects_an_instant_beyond_the_horizon() -> None:
    with pytest.raises(ProblemError) as caught:
        check_window(NOW + TWO_YEARS + timedelta(microseconds=1), NOW, TWO_YEARS)
    assert caught.value.code == ErrorCode.SCHEDULED_TIME_TOO_FAR
    assert "2028-12-31T12:00:00Z" in caught.value.detail  # 730 days on (2028 is a leap year)


def test_the_window_compares_instants_not_wall_times() -> None:
    # 13:00+02:00 is 11:00Z: before a noon-UTC "now", although its wall time is later
    with pytest.raises(ProblemError):
        check_window(datetime(2027, 1, 1, 13, 0, tzinfo=timezone(timedelta(hours=2))), NOW, TWO_YEARS)


def test_the_window_refuses_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="aware"):
        check_window(datetime(2028, 1, 1), NOW, TWO_YEARS)


# --- Properties over every zone -----------------------------------------------------------------


def test_the_property_tests_cover_every_zone_and_the_known_odd_ones() -> None:
    assert len(ZONES) > 500
    assert {NEW_YORK, LORD_HOWE, "Antarctica/Troll", "Pacific/Apia", "UTC"} <= set(ZONES)


@PROPERTY_SETTINGS
@given(walls_near_transitions())
def test_any_wall_time_resolves_to_the_instant_that_shows_it(zone_and_wall: tuple[str, datetime]) -> None:
    # Given any zone and any wall time (many of them in or next to a gap or a fold)
    name, wall = zone_and_wall
    zone = zoneinfo.ZoneInfo(name)
    shown = wall.isoformat()
    # When it is resolved with shift_forward / earlier
    resolved = resolve_schedule(shown, name, "shift_forward", "earlier")
    assert resolved.time_zone == name
    assert resolved.instant.tzinfo is UTC
    # (not ``local == instant``: PEP 495 makes inter-zone == False for any time in a fold)
    assert resolved.local.astimezone(UTC) == resolved.instant
    assert resolved.local.replace(tzinfo=None, fold=0) == wall_of(resolved.instant, zone)
    found = occurrences(wall, zone)

    event(["gap", "single", "fold"][min(len(found), 2)])
    if len(found) == 1:
        # Then a wall time that exists once is that instant, and shows as itself
        assert resolved.instant == found[0]
        assert wall_of(resolved.instant, zone) == wall
        assert resolve_schedule(shown, name, "reject", "reject").instant == found[0]
    elif len(found) == 2:
        # Then in a fold, earlier < later and both show the same wall time
        later = resolve_schedule(shown, name, "reject", "later").instant
        assert resolved.instant == found[0] < later == found[1]
        assert wall_of(resolved.instant, zone) == wall == wall_of(later, zone)
        with pytest.raises(ProblemError) as caught:
            resolve_schedule(shown, name, "shift_forward", "reject")
        assert caught.value.code == ErrorCode.AMBIGUOUS_LOCAL_TIME
    else:
        # Then in a gap, the result is later than the wall time by exactly the gap's length
        before, after = gap_offsets(wall, zone)
        assert after > before
        assert wall_of(resolved.instant, zone) - wall == after - before
        assert resolved.instant == (wall - before).replace(tzinfo=UTC)
        with pytest.raises(ProblemError) as caught:
            resolve_schedule(shown, name, "reject", "earlier")
        assert caught.value.code == ErrorCode.NONEXISTENT_LOCAL_TIME


@PROPERTY_SETTINGS
@given(instants_near_transitions())
def test_any_instant_shown_as_wall_time_resolves_back_to_itself(zone_and_instant: tuple[str, datetime]) -> None:
    # Given any instant shown as wall time in any zone
    name, instant = zone_and_instant
    local = instant.astimezone(zoneinfo.ZoneInfo(name))
    wall = local.replace(tzinfo=None).isoformat()
    # When that wall time is resolved with the policy matching its fold
    resolved = resolve_schedule(wall, name, "reject", "later" if local.fold else "earlier")
    # Then it is the same instant again
    assert resolved.instant == instant
    # And its local rendering, read back with its offset, is the same instant too
    assert resolve_schedule(format_local(instant, name), name, "reject", "reject").instant == instant


@PROPERTY_SETTINGS
@given(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC) | st.timezones())
)
def test_format_instant_round_trips_and_trims_the_fraction(instant: datetime) -> None:
    # Given any aware datetime (zoned ones may even be imaginary, which == cannot compare
    # across zones, hence the comparison in UTC)
    text = format_instant(instant)
    assert datetime.fromisoformat(text) == instant.astimezone(UTC)
    assert resolve_schedule(text, None).instant == instant.astimezone(UTC)
    assert text.endswith("Z")
    fraction = text[19:-1]
    if instant.microsecond == 0:
        assert fraction == ""
    elif instant.microsecond % 1000 == 0:
        assert len(fraction) == 4
    else:
        assert len(fraction) == 7


@PROPERTY_SETTINGS
@given(instants_1970_2100, st.sampled_from(ZONES))
def test_format_local_round_trips_with_the_zone_offset(instant: datetime, name: str) -> None:
    text = format_local(instant, name)
    parsed = datetime.fromisoformat(text)
    assert parsed == instant
    assert parsed.utcoffset() == instant.astimezone(zoneinfo.ZoneInfo(name)).utcoffset()
