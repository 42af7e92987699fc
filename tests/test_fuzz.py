"""Property-based: generated bad values thrown at GenerationConfig and the CLI parser get a clean
ValueError / exit 2 (or a valid config), never another exception."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leapdecode import GenerationConfig
from leapdecode.cli import build_parser, read_prompt, UsageError

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

anything = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=10**18, max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(min_value=0, max_value=1e-290),
    st.text(max_size=20), st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
FIELDS = ["max_new_tokens", "temperature", "top_k", "top_p", "seed", "stop", "budget"]


@SETTINGS
@given(st.dictionaries(st.sampled_from(FIELDS), anything, max_size=4))
def test_config_clean_error_or_valid(fields):
    try:
        config = GenerationConfig(**fields)
    except ValueError as err:
        assert "\n" not in str(err) and str(err)
        return
    s = config.sampling
    assert math.isfinite(s.temperature) and s.temperature >= 0
    assert 0 < s.top_p <= 1 and isinstance(s.top_k, int) and s.top_k >= 0
    assert isinstance(config.max_new_tokens, int) and config.max_new_tokens >= 0
    assert all(isinstance(x, str) and x for x in config.stop)
    if s.seed is not None:
        assert -(2**63) <= s.seed < 2**64


number_text = st.one_of(st.sampled_from(["nan", "inf", "-inf", "1e999", "-0", "0x10", "", " ", "1_000", "٣"]),
                        st.floats().map(repr), st.integers(min_value=-(10**30), max_value=10**30).map(str),
                        st.text(max_size=8))


@SETTINGS
@given(st.sampled_from(["--temperature", "--top-p", "--top-k", "--seed", "--max-new-tokens", "--budget"]),
       number_text)
def test_cli_numbers_clean(flag, text):
    """Parse and build the config as `generate` does: argparse's exit 2, a ValueError, or valid."""
    parser = build_parser()
    try:
        args = parser.parse_args(["generate", "hi", f"{flag}={text}"])
    except SystemExit as stop:
        assert stop.code == 2
        return
    try:
        GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                         top_p=args.top_p, seed=args.seed, budget=args.budget)
    except ValueError as err:
        assert "\n" not in str(err)


@SETTINGS
@given(st.text(max_size=40).filter(lambda t: t != "-"))  # "-" means: read stdin (tested in test_cli)
def test_prompt_text_clean(text):
    try:
        assert read_prompt(text) == text
        text.encode("utf-8")
    except UsageError as err:
        assert "UTF-8" in str(err)
        with pytest.raises(UnicodeEncodeError):
            text.encode("utf-8")
