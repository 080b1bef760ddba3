"""The load test against a live server: numbers, JSON, plot; loopback only."""

import json

import pytest

from glmtune.serve.loadtest import bench_serve, percentile


def test_percentile_nearest_rank():
    assert percentile([1, 2, 3, 4], 50) == 2 and percentile([1, 2, 3, 4], 99) == 4 and percentile([], 50) is None


def test_refuses_remote_targets():
    from glmtune.errors import InputError

    with pytest.raises(InputError, match="non-loopback"):
        bench_serve("http://10.1.2.3:8000/v1", [1], 1)
    with pytest.raises(InputError, match="non-loopback"):  # a host name (ipaddress raised ValueError before)
        bench_serve("http://example.com:8000/v1", [1], 1)


def test_bench_serve_writes_json_and_plot(start_app, tmp_path):
    url, _ = start_app()
    res = bench_serve(f"{url}/v1", [1, 4], 8, max_tokens=8, model="tiny", out_dir=str(tmp_path))
    assert [lv["concurrency"] for lv in res["levels"]] == [1, 4]
    for lv in res["levels"]:
        assert lv["ok"] == 8 and lv["errors"] == 0 and lv["req_per_s"] > 0 and lv["output_tokens"] > 0
        assert lv["latency_p50_s"] <= lv["latency_p95_s"] <= lv["latency_p99_s"]
    assert json.loads((tmp_path / "loadtest.json").read_text())["levels"] == res["levels"]
    assert (tmp_path / "loadtest.png").read_bytes()[:4] == b"\x89PNG"
