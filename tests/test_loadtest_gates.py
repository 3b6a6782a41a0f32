"""`fleetserve loadtest run` fails loudly: a preflight before any load, exit 1 with the reasons after a bad run.

Real HTTP against the streaming test server (or a closed port), real Locust subprocesses.
"""

from __future__ import annotations

import pytest
from loadtest_helpers.server import sse_server
from typer.testing import CliRunner

from conftest import free_port
from loadtest.cli import cli
from loadtest.errors import LoadTestError
from loadtest.gates import parse_fail_on

pytestmark = pytest.mark.timeout(180)

SHORT = ["--users", "2", "--duration", "2s", "--drain", "1s", "--output-len", "4", "--input-len", "8"]


def _run(args, tmp_path):
    # mix_stderr is gone in recent Click: result.output holds stdout and stderr both.
    return CliRunner().invoke(cli, ["run", *args, *SHORT, "-o", str(tmp_path / "o")])


def test_a_closed_port_fails_the_preflight(tmp_path):
    res = _run(["--host", f"http://127.0.0.1:{free_port()}", "-m", "sim"], tmp_path)
    assert res.exit_code == 2, res.output
    assert "preflight: nothing answers at http://127.0.0.1:" in res.output
    assert not (tmp_path / "o" / "results.json").exists()  # no load was sent


def test_an_unknown_model_fails_the_preflight_naming_the_served_ones(tmp_path):
    with sse_server(ttft_ms=5, itl_ms=1) as url:
        res = _run(["--host", url, "-m", "nosuch"], tmp_path)
    assert res.exit_code == 2, res.output
    assert "does not serve 'nosuch'; it serves ['sim']" in res.output


def test_all_requests_failing_exits_1_with_the_top_reason(tmp_path):
    res = _run(["--host", f"http://127.0.0.1:{free_port()}", "-m", "sim", "--no-preflight"], tmp_path)
    assert res.exit_code == 1, res.output
    assert "FAILED: all" in res.output and "requests failed" in res.output
    assert "ConnectionError" in res.output  # the top failure reason


def test_a_broken_threshold_exits_1_and_a_kept_one_0(tmp_path):
    with sse_server(ttft_ms=20, itl_ms=1) as url:
        broken = _run(["--host", url, "-m", "sim", "--fail-on", "ttft_p95_ms>1"], tmp_path)
        kept = _run(["--host", url, "-m", "sim", "--fail-on", "error_rate>0.5,ttft_p95_ms>5000"], tmp_path)
    assert broken.exit_code == 1, broken.output
    assert "FAILED: ttft_p95_ms = " in broken.output and "> 1" in broken.output
    assert kept.exit_code == 0, kept.output


@pytest.mark.parametrize("text", ["ttft>5", "error_rate<0.1", "latency_p95_ms>3"])
def test_a_bad_fail_on_names_the_metrics(text):
    with pytest.raises(LoadTestError, match="use METRIC>LIMIT with METRIC one of error_rate"):
        parse_fail_on(text)
