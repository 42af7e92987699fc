"""k independent samples over the shared prompt cache (the benchmark's baseline)."""

import pytest

from leapdecode.decoding import SampleConfig, decode


def test_seeded_samples(engine):
    prompt = "Name a fruit."
    a = decode(engine, prompt, "sample", num_beams=3, max_new_tokens=6, temperature=0.8, seed=1)
    b = decode(engine, prompt, "sample", num_beams=3, max_new_tokens=6, temperature=0.8, seed=1)
    assert [o.token_ids for o in a] == [o.token_ids for o in b]  # same seed, same samples
    assert len(a) == 3 and all(1 <= len(o.token_ids) <= 6 for o in a)
    assert [o.score for o in a] == sorted((o.score for o in a), reverse=True)
    for o in a:  # a sample stops at its first EOS
        assert all(t not in engine.eos_ids for t in o.token_ids[:-1])


def test_greedy_sampling_is_refused():
    with pytest.raises(ValueError, match="temperature > 0"):
        SampleConfig(temperature=0.0)
