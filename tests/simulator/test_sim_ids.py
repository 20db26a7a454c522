"""The simulator's ids: the fast digit conversion gives the ids one digit at a time gives."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gptbatch.simulator.results import BASE62, HEX, base_digits


def one_digit_at_a_time(entropy: bytes, length: int, alphabet: str) -> str:
    number = int.from_bytes(entropy, "big")
    digits = []
    for _ in range(length):
        number, digit = divmod(number, len(alphabet))
        digits.append(alphabet[digit])
    return "".join(digits)


@given(
    entropy=st.binary(min_size=0, max_size=40),
    length=st.integers(min_value=0, max_value=64),
    alphabet=st.sampled_from([HEX, BASE62, "01", "abc", "0123456789"]),
)
def test_base_digits_equal_the_digit_by_digit_conversion(
    entropy: bytes, length: int, alphabet: str
) -> None:
    assert base_digits(entropy, length, alphabet) == one_digit_at_a_time(entropy, length, alphabet)
