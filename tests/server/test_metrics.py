"""The Prometheus text on literal counts."""

from leapdecode.server.metrics import Metrics


def samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_render_counts_and_tau():
    m = Metrics()
    m.request("/v1/completions", 200)
    m.request("/v1/completions", 200)
    m.request("/v1/completions", 429)
    m.generation("prompt-lookup", prompt_tokens=10, new_tokens=12, steps=4)
    m.generation("prompt-lookup", prompt_tokens=5, new_tokens=6, steps=5)
    m.generation("none", prompt_tokens=3, new_tokens=7, steps=7)
    m.cancellation()
    text = m.render(queue_depth=3, running=1, dropped=2)
    got = samples(text)
    assert got['leapdecode_requests_total{endpoint="/v1/completions",status="200"}'] == 2
    assert got['leapdecode_requests_total{endpoint="/v1/completions",status="429"}'] == 1
    assert got['leapdecode_generated_tokens_total{method="prompt-lookup"}'] == 18
    assert got['leapdecode_target_passes_total{method="prompt-lookup"}'] == 9
    assert got['leapdecode_mean_accepted_length{method="prompt-lookup"}'] == 2.0  # 18 / 9
    assert got['leapdecode_mean_accepted_length{method="none"}'] == 1.0
    assert got['leapdecode_prompt_tokens_total{method="none"}'] == 3
    assert got["leapdecode_cancelled_generations_total"] == 1
    assert got["leapdecode_queue_depth"] == 3
    assert got["leapdecode_requests_running"] == 1
    assert got["leapdecode_dropped_requests_total"] == 2
    # every sample belongs to a family announced by HELP and TYPE lines
    families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    assert all(name.split("{")[0] in families for name in got)


def test_label_values_are_escaped():
    m = Metrics()
    m.request('a"b\\c\n', 200)
    assert 'endpoint="a\\"b\\\\c\\n"' in m.render(0, 0, 0)


def test_empty_metrics_render():
    got = samples(Metrics().render(0, 0, 0))
    assert got["leapdecode_queue_depth"] == 0
    assert not any(name.startswith("leapdecode_mean_accepted_length") for name in got)
