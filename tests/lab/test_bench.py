"""Smoke tests of the benchmark: the core micro-benchmark, and a short end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fz_trio.datapath import kernels
from fz_trio.lab import bench


def test_core_bench_tiny() -> None:
    result = bench.core_bench(batches=3, batch_size=8, packet_size=1400, warmup=1,
                              twin="python")
    assert result.packets == 24 and result.kernels == "python"
    for value in (result.encrypt_us_per_packet, result.decrypt_us_per_packet,
                  result.encrypt_gbits, result.decrypt_gbits):
        assert 0 < value < float("inf")
    # µs per packet and Gbit/s describe the same measurement.
    assert result.encrypt_gbits == pytest.approx(1400 * 8 / (result.encrypt_us_per_packet * 1e3))
    assert "µs/packet" in bench.format_core(result)


def test_core_cli_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "core.json"
    assert bench.main(["core", "--core-batches", "2", "--batch-size", "4",
                       "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    twins = [core["kernels"] for core in data["core"]]
    assert twins == ["python"] + (["native"] if kernels.IMPLEMENTATION == "native" else [])
    assert all(core["encrypt_us_per_packet"] > 0 for core in data["core"])
    assert data["machine"]["nproc"] >= 1
    assert data["runs"] == []
    assert "decrypt" in capsys.readouterr().out


def test_options() -> None:
    base = bench.Variant("default", ("--x",))
    variants = bench.parse_variants("default;--tun-queues 1", base)
    assert variants == [base, bench.Variant("--tun-queues 1", ("--x", "--tun-queues", "1"))]
    jobs = bench.plan(["veth", "fz-wggo", "fz-fz"], base, variants)
    assert [(j.pair, j.variant.fz_args) for j in jobs] == [
        ("veth", ()), ("fz-wggo", ("--x",)), ("fz-fz", ("--x",)),
        ("fz-fz", ("--x", "--tun-queues", "1")),
    ]
    assert bench._join_dash_values(["--fz-args", "--no-offload", "--seconds", "2"]) == [
        "--fz-args=--no-offload", "--seconds", "2"]
    with pytest.raises(SystemExit):
        bench.main(["e2e", "--pairs", "nope"])


@pytest.mark.netns
def test_end_to_end_veth_and_fz(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    rc = bench.main(["e2e", "--pairs", "veth,fz-fz", "--seconds", "2", "--streams", "1",
                     "--json", str(out)])
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    runs = data["runs"]
    assert rc == 0, printed
    assert [(r["pair"], r["direction"], r["streams"]) for r in runs] == [
        ("veth", "up", 1), ("veth", "down", 1), ("fz-fz", "up", 1), ("fz-fz", "down", 1)]
    for r in runs:
        assert r["error"] is None
        assert r["mbits"] > 0 and r["bytes_received"] > 0
        assert r["ratio"] is None  # no wggo-wggo in this run
        assert f"{r['mbits']:.0f}" in printed
    for r in runs[2:]:
        assert {s["role"] for s in r["sides"]} == {"client", "server"}
        for side in r["sides"]:
            assert side["implementation"] == "fz-trio"
            assert side["cpu_seconds"] > 0 and side["cpu_s_per_gb"] > 0
            assert side["peak_rss_mb"] > 1
        assert r["fz_cpu_s_per_gb"] > 0
    assert "wireguard-go" in data["machine"]["wireguard_go"]
