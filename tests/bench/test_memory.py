"""Shared-prefix memory: 8 beams on a 2,000-token prompt (slow: two fresh processes)."""

import pytest

from leapdecode.bench.memory import compare


@pytest.mark.slow
def test_eight_beams_do_not_copy_the_prompt():
    result = compare("smollm2-135m", prompt_tokens=2000, beams=8, steps=4)
    one_copy = result["shared"]["prompt_cache_bytes"]
    # decoding adds well under one prompt cache on top of the prefill (a per-layer temporary),
    # while copying the prompt per beam adds about seven more
    assert result["shared"]["added_peak_bytes"] < 0.75 * one_copy
    assert result["copy"]["added_peak_bytes"] > 5 * one_copy
