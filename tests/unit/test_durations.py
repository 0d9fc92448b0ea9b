import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (3600, 3600.0),
        (1.5, 1.5),
        ("90", 90.0),
        ("PT1H", 3600.0),
        ("PT30M", 1800.0),
        ("PT1.5S", 1.5),
        ("P7D", 604800.0),
        ("P1W", 604800.0),
        ("P1DT2H3M4S", 93784.0),
        ("p1d", 86400.0),
    ],
)
def test_parses_seconds_and_iso_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "P", "PT", "1h", "P1H", "PT1D", "-5", "P-1D", "abc"])
def test_rejects_malformed(text: str) -> None:
    with pytest.raises(ValueError, match=r"ISO-8601|not"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["P1Y", "P2M", "P1Y2M3D"])
def test_refuses_years_and_months(text: str) -> None:
    with pytest.raises(ValueError, match="years and months"):
        parse_duration(text)


@pytest.mark.parametrize("value", [-1, float("nan"), float("inf"), True, None, [1]])
def test_rejects_non_durations(value: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


@given(st.integers(min_value=0, max_value=10**9))
def test_format_then_parse_round_trips(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds
