import pytest

from slmpack.errors import InvalidSpecError
from slmpack.units import format_duration, parse_duration_s


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("1.5s", 1.5), ("50 ms", 0.05), ("250us", 0.00025), ("2m", 120.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration_s(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["500", "-1s", "fast", "0ms", "1h", ""])
def test_bad_durations_say_how_to_write_one(text: str) -> None:
    with pytest.raises(InvalidSpecError, match=r"500ms|greater than zero"):
        parse_duration_s(text)


def test_format_duration() -> None:
    assert format_duration(0.0421) == "42.1ms"
    assert format_duration(2.5) == "2.50s"
