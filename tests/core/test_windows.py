"""The active-windows grammar and its wall-clock semantics, as tables (no real waiting: instants are given)."""

from datetime import datetime, timezone

import pytest

from nmi.windows import MAX_TEXT, MAX_WINDOWS, WindowSyntaxError, parse_windows


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


MON, TUE, WED, THU, FRI, SAT, SUN = range(7)


@pytest.mark.parametrize("text, days, start, end", [
    ("Mon 09:00-17:00 UTC", {MON}, 540, 1020),
    ("mon-FRI 09:00-17:00 UTC", {MON, TUE, WED, THU, FRI}, 540, 1020),
    ("Fri-Mon 12:00-13:00 UTC", {FRI, SAT, SUN, MON}, 720, 780),  # a day range wraps over the week's end
    ("Mon,Wed 12:00-13:00 UTC", {MON, WED}, 720, 780),
    ("Mon,Wed-Fri,Sun 12:00-13:00 UTC", {MON, WED, THU, FRI, SUN}, 720, 780),
    ("Sun-Sun 12:00-13:00 UTC", {SUN}, 720, 780),
    ("Sat 00:00-24:00 UTC", {SAT}, 0, 1440),
    ("Fri 22:00-02:00 Europe/Berlin", {FRI}, 1320, 120),  # crosses midnight
    (" \tTue \t 01:00-02:00\n America/New_York  ", {TUE}, 60, 120),
])
def test_valid_windows_parse_to_days_and_minutes(text, days, start, end):
    (window,) = parse_windows(text).windows
    assert (set(window.days), window.start, window.end) == (days, start, end)


def test_several_windows_are_separated_by_semicolons_each_with_its_zone():
    parsed = parse_windows("Mon-Fri 00:00-01:00 Europe/Berlin; Sat 10:00-12:00 UTC")
    assert [(w.zone.key, w.start) for w in parsed.windows] == [("Europe/Berlin", 0), ("UTC", 600)]


@pytest.mark.parametrize("text, complaint", [
    ("", "empty"),
    ("  \t ", "empty"),
    ("Mon 09:00-10:00 UTC;", "window 2 is empty"),  # a trailing semicolon is an empty window
    ("Mon 09:00-10:00 UTC;;Tue 09:00-10:00 UTC", "window 2 is empty"),
    ("Funday 09:00-10:00 UTC", "unknown day"),
    ("Monday 09:00-10:00 UTC", "unknown day"),
    ("Mon-Xyz 09:00-10:00 UTC", "unknown day"),
    ("Mon,,Tue 09:00-10:00 UTC", "unknown day"),
    ("Mon, Tue 09:00-10:00 UTC", "expected"),  # no whitespace inside the day list
    ("Mon 9:00-10:00 UTC", "bad time range"),
    ("Mon 09:00 - 10:00 UTC", "expected"),
    ("Mon 09:00-10:00", "expected"),  # the zone is required
    ("Mon 09:00-10:00 UTC extra", "expected"),
    ("Mon 24:00-01:00 UTC", "bad time"),
    ("Mon 10:00-24:30 UTC", "bad time"),
    ("Mon 10:60-11:00 UTC", "bad time"),
    ("Mon 25:00-26:00 UTC", "bad time"),
    ("Mon 10:00-10:00 UTC", "empty time range"),
    ("Mon 10:00-11:00 Mars/Olympus_Mons", "unknown time zone"),
    ("Mon 10:00-11:00 ../../../etc/passwd", "bad time zone"),
    ("Mon 10:00-11:00 /etc/localtime", "bad time zone"),
    ("Mon 10:00-11:00 UTC\x1b[31m", "bad time zone"),
    ("Mon 10:00-11:00 " + "A" * 70, "bad time zone"),
    ("Mon 10:00-11:00 UTC" + " " * MAX_TEXT, "longer than"),
    (";".join(["Mon 10:00-11:00 UTC"] * (MAX_WINDOWS + 1)), "more than"),
])
def test_malformed_annotations_are_refused_with_a_reason(text, complaint):
    with pytest.raises(WindowSyntaxError, match=complaint) as raised:
        parse_windows(text)
    assert "\x1b" not in str(raised.value)  # fragments are quoted with escapes: safe to log


@pytest.mark.parametrize("text, instant, active", [
    ("Mon-Fri 09:00-17:00 UTC", "2026-12-07T09:00:00", True),  # Monday, the start is inside
    ("Mon-Fri 09:00-17:00 UTC", "2026-12-07T08:59:59", False),
    ("Mon-Fri 09:00-17:00 UTC", "2026-12-07T17:00:00", False),  # the end is outside
    ("Mon-Fri 09:00-17:00 UTC", "2026-12-05T10:00:00", False),  # Saturday
    ("Fri 22:00-02:00 UTC", "2026-12-04T23:00:00", True),  # Friday night
    ("Fri 22:00-02:00 UTC", "2026-12-05T01:59:00", True),  # ... into Saturday morning
    ("Fri 22:00-02:00 UTC", "2026-12-05T02:00:00", False),
    ("Fri 22:00-02:00 UTC", "2026-12-04T01:00:00", False),  # Friday morning belongs to Thursday, not listed
    ("Fri-Mon 12:00-13:00 UTC", "2026-12-06T12:30:00", True),  # Sunday, inside the wrapped day range
    ("Fri-Mon 12:00-13:00 UTC", "2026-12-08T12:30:00", False),  # Tuesday
    ("Sat 00:00-24:00 UTC", "2026-12-05T23:59:59", True),
    ("Sat 00:00-24:00 UTC", "2026-12-06T00:00:00", False),
    ("Mon 00:00-01:00 Europe/Berlin", "2026-12-06T23:30:00", True),  # Sunday in UTC, Monday 00:30 in Berlin
    ("Mon 00:00-01:00 Europe/Berlin", "2026-12-07T00:30:00", False),  # 01:30 in Berlin
    ("Mon 00:00-01:00 Europe/Berlin; Sat 10:00-12:00 UTC", "2026-12-05T11:00:00", True),
])
def test_a_window_is_open_while_the_local_wall_clock_is_inside_it(text, instant, active):
    assert parse_windows(text).active_at(utc(instant)) is active


# Europe/Berlin 2026: spring forward on Sunday 29 March at 01:00 UTC (02:00 CET -> 03:00 CEST);
# fall back on Sunday 25 October at 01:00 UTC (03:00 CEST -> 02:00 CET).
@pytest.mark.parametrize("text, instant, active", [
    ("Sun 02:30-04:00 Europe/Berlin", "2026-03-29T00:59:59", False),  # 01:59:59 CET
    ("Sun 02:30-04:00 Europe/Berlin", "2026-03-29T01:00:00", True),  # 03:00 CEST: opens when the gap ends
    ("Sun 02:00-03:00 Europe/Berlin", "2026-03-29T01:00:00", False),  # wholly in the gap: not that day
    ("Sun 02:00-02:30 Europe/Berlin", "2026-10-25T00:00:00", True),  # 02:00 CEST
    ("Sun 02:00-02:30 Europe/Berlin", "2026-10-25T00:30:00", False),  # 02:30 CEST
    ("Sun 02:00-02:30 Europe/Berlin", "2026-10-25T01:00:00", True),  # 02:00 CET: the repeated half hour again
    ("Sun 02:00-02:30 Europe/Berlin", "2026-10-25T01:30:00", False),
])
def test_dst_gaps_skip_wall_times_and_overlaps_repeat_them(text, instant, active):
    assert parse_windows(text).active_at(utc(instant)) is active


@pytest.mark.parametrize("text, now, opens", [
    ("Mon-Fri 00:00-01:00 Europe/Berlin; Sat 10:00-12:00 UTC", "2026-12-05T13:00:00", "2026-12-07T00:00:00+01:00"),
    ("Mon-Fri 00:00-01:00 Europe/Berlin; Sat 10:00-12:00 UTC", "2026-12-04T02:00:00", "2026-12-05T10:00:00+00:00"),
    ("Fri 22:00-02:00 UTC", "2026-12-05T02:00:00", "2026-12-11T22:00:00+00:00"),
    ("Sun 02:30-04:00 Europe/Berlin", "2026-03-28T12:00:00", "2026-03-29T03:00:00+02:00"),  # at the gap's end
    ("Sun 02:00-03:00 Europe/Berlin", "2026-03-28T12:00:00", "2026-04-05T02:00:00+02:00"),  # the week after
    ("Sun 02:00-02:30 Europe/Berlin", "2026-10-25T00:45:00", "2026-10-25T02:00:00+01:00"),  # the repeat
    ("Sun 01:30-02:30 Europe/Berlin", "2026-10-25T00:45:00", "2026-10-25T02:00:00+01:00"),  # the jump back
])
def test_next_opening_is_the_first_instant_a_window_is_open(text, now, opens):
    windows = parse_windows(text)
    assert not windows.active_at(utc(now))
    opening = windows.next_opening(utc(now))
    assert opening is not None and opening.iso() == opens
    assert windows.active_at(opening.at) and not windows.active_at(opening.at - 1)


def test_next_opening_is_remembered_until_it_comes_and_recomputed_after():
    windows = parse_windows("Tue 14:00-15:00 UTC; Thu 14:00-15:00 UTC")
    first = windows.next_opening(utc("2026-12-08T12:00:00"))
    assert first.iso() == "2026-12-08T14:00:00+00:00"
    assert windows.next_opening(utc("2026-12-08T13:59:59")) is first  # asked again before it: the same answer
    assert windows.next_opening(utc("2026-12-08T15:00:00")).iso() == "2026-12-10T14:00:00+00:00"
    assert windows.next_opening(utc("2026-12-08T11:00:00")).iso() == "2026-12-08T14:00:00+00:00"  # the clock went back
