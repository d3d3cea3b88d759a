"""The run's time split (search/phases.py): each second counts once, in the innermost phase open."""

from adasearch.search.phases import PhaseClock
from tests.test_interleaved import FakeClock


def test_nested_phases_count_each_second_once_and_repeats_add_up():
    t = FakeClock()
    clock = PhaseClock(clock=t)
    with clock.phase("re-timing"):
        t.now += 3  # 0-3: the first session
        with clock.phase("racing"):
            t.now += 2  # 3-5: racing, inside the re-timing
        t.now += 1  # 5-6: re-timing again (who joined the front)
    with clock.phase("search"):
        t.now += 4
    with clock.phase("re-timing"):  # a fallback round's re-timing joins the first's
        t.now += 0.5
    assert clock.seconds == {"re-timing": 4.5, "racing": 2.0, "search": 4.0}
    assert sum(clock.seconds.values()) == t.now  # the phases add up to the time they cover
    assert clock.note(12.0) == "time: 12 s in all (re-timing 4 s, racing 2 s, search 4 s)"


def test_a_phase_left_by_an_exception_still_counts():
    t = FakeClock()
    clock = PhaseClock(clock=t)
    try:
        with clock.phase("search"):
            t.now += 2
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert clock.seconds == {"search": 2.0}
    assert PhaseClock().note(7.4) == "time: 7 s in all"
