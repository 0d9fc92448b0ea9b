import random

from webhooks import DEFAULT_SCHEDULE, RetryPolicy


def test_default_schedule_spans_more_than_a_day() -> None:
    assert sum(DEFAULT_SCHEDULE) > 86_400
    assert RetryPolicy().max_attempts == 8


def test_delays_follow_the_schedule_within_the_jitter() -> None:
    policy = RetryPolicy(schedule=(10, 100, 1000), jitter=0.2)
    rng = random.Random(7)
    for attempt, base in enumerate((10, 100, 1000), start=1):
        delays = {policy.next_delay(attempt, rng=rng) for _ in range(200)}
        assert all(d is not None and 0.8 * base <= d <= 1.2 * base for d in delays)
        assert len(delays) > 100, "jitter spreads retries"
    assert policy.next_delay(4) is None, "dead after the schedule"


def test_retry_after_wins_but_is_capped_and_adds_no_attempts() -> None:
    policy = RetryPolicy(schedule=(5, 5), max_retry_after=60)
    assert policy.next_delay(1, retry_after=30) == 30
    assert policy.next_delay(1, retry_after=3600) == 60
    assert policy.next_delay(1, retry_after=-5) == 0
    assert policy.next_delay(3, retry_after=1) is None
