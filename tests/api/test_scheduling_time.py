"""scheduled_for / time_zone through the API: instants, wall times, DST gaps and folds, the window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from payments.models import Payment

from .conftest import DROP, FIXED_NOW, REAL_DATABASE_NOW, assert_problem, create, error_codes, payment_body

pytestmark = pytest.mark.django_db


def schedule(api, **fields):
    return create(api, payment_body(**fields))


def test_it_shifts_a_time_in_the_dst_gap_forward_when_asked(api):
    # given 02:30 on the night New York skips 02:00-03:00
    # when the client asks for shift_forward
    response = schedule(
        api, scheduled_for="2027-03-14T02:30", time_zone="America/New_York", on_nonexistent_time="shift_forward"
    )

    # then the wall time moves forward by the gap's length, to 03:30 EDT
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["scheduled_for"] == "2027-03-14T07:30:00Z"
    assert body["scheduled_local"] == "2027-03-14T03:30:00-04:00"
    assert body["time_zone"] == "America/New_York"


def test_it_rejects_a_time_in_the_dst_gap(api):
    # given the same nonexistent wall time and the default policy
    response = schedule(api, scheduled_for="2027-03-14T02:30:00", time_zone="America/New_York")

    # then 422 nonexistent_local_time, and nothing is created
    body = assert_problem(response, 422, "nonexistent_local_time")
    assert error_codes(body) == [("scheduled_for", "nonexistent_local_time")]
    assert not Payment.objects.exists()


@pytest.mark.parametrize(
    ("policy", "instant", "local"),
    [
        (DROP, "2027-11-07T05:30:00Z", "2027-11-07T01:30:00-04:00"),
        ("earlier", "2027-11-07T05:30:00Z", "2027-11-07T01:30:00-04:00"),
        ("later", "2027-11-07T06:30:00Z", "2027-11-07T01:30:00-05:00"),
    ],
)
def test_it_resolves_a_time_in_the_dst_fold_by_policy(api, policy, instant, local):
    # given 01:30 on the night New York's clocks go back (it happens twice)
    response = schedule(api, scheduled_for="2027-11-07T01:30", time_zone="America/New_York", on_ambiguous_time=policy)

    # then the earlier (default) or later occurrence is chosen
    assert response.status_code == 201, response.content
    assert (response.json()["scheduled_for"], response.json()["scheduled_local"]) == (instant, local)


def test_it_rejects_an_ambiguous_time_when_asked_to(api):
    response = schedule(api, scheduled_for="2027-11-07T01:30", time_zone="America/New_York", on_ambiguous_time="reject")
    body = assert_problem(response, 422, "ambiguous_local_time")
    assert error_codes(body) == [("scheduled_for", "ambiguous_local_time")]


def test_it_handles_lord_howes_half_hour_dst_gap(api):
    # given Lord Howe Island, whose clocks jump 02:00 -> 02:30
    response = schedule(
        api,
        scheduled_for="2027-10-03T02:15",
        time_zone="Australia/Lord_Howe",
        on_nonexistent_time="shift_forward",
    )

    # then 02:15 moves forward by 30 minutes
    assert response.status_code == 201, response.content
    assert response.json()["scheduled_for"] == "2027-10-02T15:45:00Z"
    assert response.json()["scheduled_local"] == "2027-10-03T02:45:00+11:00"
    # and without the policy it is refused
    assert_problem(
        schedule(api, scheduled_for="2027-10-03T02:15", time_zone="Australia/Lord_Howe"), 422, "nonexistent_local_time"
    )


@pytest.mark.parametrize(
    ("policy", "instant", "local"),
    [
        ("earlier", "2027-04-03T14:45:00Z", "2027-04-04T01:45:00+11:00"),
        ("later", "2027-04-03T15:15:00Z", "2027-04-04T01:45:00+10:30"),
    ],
)
def test_it_handles_lord_howes_half_hour_dst_fold(api, policy, instant, local):
    response = schedule(
        api, scheduled_for="2027-04-04T01:45", time_zone="Australia/Lord_Howe", on_ambiguous_time=policy
    )
    assert response.status_code == 201, response.content
    assert (response.json()["scheduled_for"], response.json()["scheduled_local"]) == (instant, local)


def test_an_instant_with_an_offset_keeps_the_zone_given_for_display(api):
    # given an instant with an offset and a display zone
    response = schedule(api, scheduled_for="2027-03-14T03:30:00-04:00", time_zone="America/New_York")

    # then the instant is stored in UTC and shown in the zone
    body = response.json()
    assert (body["scheduled_for"], body["time_zone"], body["scheduled_local"]) == (
        "2027-03-14T07:30:00Z",
        "America/New_York",
        "2027-03-14T03:30:00-04:00",
    )


def test_fractional_seconds_are_kept_and_shown_only_when_not_zero(api):
    body = schedule(api, scheduled_for="2027-03-14T07:30:00.250Z").json()
    assert body["scheduled_for"] == "2027-03-14T07:30:00.250Z"
    assert Payment.objects.get(pk=body["id"]).scheduled_for == datetime(2027, 3, 14, 7, 30, 0, 250000, tzinfo=UTC)


@pytest.mark.parametrize(
    "scheduled_for",
    ["tomorrow", "2027-03-14", "2027-13-01T00:00:00Z", "2027-03-14 07:30:00Z", 1773473400, "", None, DROP],
)
def test_it_rejects_an_invalid_scheduled_for(api, scheduled_for):
    body = assert_problem(schedule(api, scheduled_for=scheduled_for), 422, "invalid_scheduled_for")
    assert error_codes(body) == [("scheduled_for", "invalid_scheduled_for")]


@pytest.mark.parametrize("time_zone", ["Mars/Olympus_Mons", "../../etc/passwd", "america/new_york", "", 5])
def test_it_rejects_an_invalid_time_zone(api, time_zone):
    body = assert_problem(
        schedule(api, scheduled_for="2027-03-14T02:30", time_zone=time_zone), 422, "invalid_time_zone"
    )
    assert error_codes(body) == [("time_zone", "invalid_time_zone")]


def test_it_requires_a_time_zone_for_a_wall_time(api):
    body = assert_problem(schedule(api, scheduled_for="2027-03-14T09:00:00"), 422, "time_zone_required")
    assert error_codes(body) == [("time_zone", "time_zone_required")]


@pytest.mark.parametrize(("field", "value"), [("on_nonexistent_time", "later"), ("on_ambiguous_time", "first")])
def test_it_rejects_an_unknown_time_policy(api, field, value):
    response = schedule(api, scheduled_for="2027-03-14T09:00", time_zone="Europe/Berlin", **{field: value})
    assert_problem(response, 422, "invalid_time_policy")


def test_it_rejects_a_time_in_the_past_by_the_database_clock(api, db_clock):
    # given the database clock (not this process's) says FIXED_NOW
    # when a payment is scheduled one second before it, or exactly at it
    before = schedule(api, scheduled_for="2026-06-01T11:59:59Z")
    at_now = schedule(api, scheduled_for="2026-06-01T12:00:00Z")

    # then both are in the past
    assert_problem(before, 422, "scheduled_time_in_past")
    assert_problem(at_now, 422, "scheduled_time_in_past")
    # and one second later is fine
    assert schedule(api, scheduled_for="2026-06-01T12:00:01Z").status_code == 201


def test_it_rejects_a_time_beyond_the_horizon(api, settings):
    # given the default two-year horizon
    latest = FIXED_NOW + settings.PAYMENTS_SCHEDULE_HORIZON

    # then the horizon's end is allowed and a second after it is too far
    assert schedule(api, scheduled_for=latest.strftime("%Y-%m-%dT%H:%M:%SZ")).status_code == 201
    too_far = schedule(api, scheduled_for=(latest + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ"))
    body = assert_problem(too_far, 422, "scheduled_time_too_far")
    assert error_codes(body) == [("scheduled_for", "scheduled_time_too_far")]


def test_the_horizon_is_configurable(api, settings):
    settings.PAYMENTS_SCHEDULE_HORIZON = timedelta(days=1)
    assert_problem(schedule(api, scheduled_for="2026-06-03T00:00:00Z"), 422, "scheduled_time_too_far")


def test_database_now_reads_the_database_clock():
    # the real selectors.database_now (the autouse fixture freezes the one the API calls)
    now = REAL_DATABASE_NOW()
    assert now.tzinfo is not None
    assert abs(now - datetime.now(UTC)) < timedelta(seconds=5)
