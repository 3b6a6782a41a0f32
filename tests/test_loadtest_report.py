"""Sweep report and results, pure: built from synthetic SweepResults and request logs (no Ray, no engine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loadtest import (
    Ladder, LoadTestError, Slo, SweepResults, goodput, load_sweep, table_lines, with_slo, write_report, write_sweep,
)
from loadtest.report import PNG_MAGIC, best_line
from loadtest.results import RequestRecord
from loadtest.sweep_results import (
    ClusterInfo, Goodput, StrategyLayout, NodeInfo, Percentiles, StepResult, StrategyResult, schema_text,
)

SCHEMA_FILE = Path(__file__).parents[1] / "loadtest" / "sweep.schema.json"


def _req(i: int, *, ttft: float | None, tpot: float | None, ok: bool = True, out: int = 32) -> RequestRecord:
    return RequestRecord(i=i, proc="local", model="m", start_unix_s=1000.0 + i, input_tokens=64, max_tokens=out,
                         output_tokens=out if ok else 0, ttft_ms=ttft, tpot_ms=tpot, e2e_ms=100.0, ok=ok,
                         error=None if ok else "HTTP 500")


LOG = [
    _req(0, ttft=100, tpot=10),             # meets both
    _req(1, ttft=499, tpot=50),             # on the bounds: meets (<=)
    _req(2, ttft=501, tpot=10),             # TTFT too slow
    _req(3, ttft=100, tpot=51),             # TPOT too slow
    _req(4, ttft=100, tpot=None, out=1),    # one token: no TPOT, meets
    _req(5, ttft=None, tpot=None, ok=False),  # failed
]


def test_goodput_counts_requests_within_both_bounds():
    g = goodput(LOG, Slo(ttft_ms=500, tpot_ms=50), duration_s=2.0)
    assert (g.requests_ok, g.requests_meeting_slo) == (5, 3)
    assert g.fraction == pytest.approx(3 / 6)  # over every request, failed ones included
    assert g.requests_per_s == pytest.approx(1.5)
    assert g.output_tokens_per_s == pytest.approx((32 + 32 + 1) / 2.0)


@pytest.mark.parametrize("slo, meeting", [
    (Slo(ttft_ms=None, tpot_ms=None), 5),   # no bounds: every ok request
    (Slo(ttft_ms=500, tpot_ms=None), 4),
    (Slo(ttft_ms=None, tpot_ms=50), 4),
    (Slo(ttft_ms=99, tpot_ms=1000), 0),
])
def test_goodput_bounds_are_independent(slo, meeting):
    assert goodput(LOG, slo, duration_s=1.0).requests_meeting_slo == meeting


def test_goodput_of_an_empty_log_is_zero():
    g = goodput([], Slo(), duration_s=0.0)
    assert (g.requests_meeting_slo, g.fraction, g.requests_per_s) == (0, 0.0, 0.0)


def _step(load: float, tok_s: float, ttft: float, *, run_dir: str = "x") -> StepResult:
    pct = lambda v: Percentiles(count=10, mean=v, p50=v, p95=v * 1.5, p99=v * 2)  # noqa: E731
    return StepResult(load=load, run_dir=run_dir, duration_s=10.0, requests_total=20, requests_failed=0,
                      requests_per_s=2.0 * load, output_tokens=int(tok_s * 10), output_tokens_per_s=tok_s,
                      ttft_ms=pct(ttft), itl_ms=pct(3.0), tpot_ms=pct(3.2), e2e_ms=pct(ttft + 100),
                      goodput=Goodput(requests_ok=20, requests_meeting_slo=10, fraction=0.5,
                                      requests_per_s=load, output_tokens_per_s=tok_s / 2))


def _layout(tp: int, pp: int) -> StrategyLayout:
    return StrategyLayout(tensor=tp, pipeline=pp, expert=1, replicas=1, bundles=({"CPU": 1.0},) * (tp * pp),
                  placement_strategy="STRICT_PACK", executor="mp", engine_args={"enforce_eager": pp == 1})


def _sweep(**kw) -> SweepResults:
    return SweepResults(
        model="tiny-dense", source="tiny:dense", host="http://127.0.0.1:8000", started_unix_s=1.0,
        cluster=ClusterInfo(address="local", ray_version="2.60.0", load_generator="box: 2 CPUs",
                            nodes=(NodeInfo(node_id="abc", resources={"CPU": 2.0}),)),
        ladder=Ladder(kind="concurrency", values=(1, 4), step_duration_s=5, drain_s=2, input_tokens=64,
                      output_tokens=32, warmup_requests=2),
        strategies=(
            StrategyResult(name="tp1", slug="tp1", layout=_layout(1, 1), ready_s=20.0,
                           steps=(_step(1, 300.0, 20.0, run_dir="tp1/c1"), _step(4, 900.0, 40.0, run_dir="tp1/c4"))),
            StrategyResult(name="tp2", slug="tp2", layout=_layout(2, 1),
                           steps=(_step(1, 250.0, 25.0), _step(4, 1100.0, 45.0))),
            StrategyResult(name="pp2:enforce_eager=false", slug="pp2_enforce_eager-false", layout=_layout(1, 2),
                           steps=(_step(1, 200.0, 30.0),), error="RuntimeError: engine died"),
        ), **kw)


def test_table_has_a_row_per_step_the_best_strategy_and_errors():
    lines = table_lines(_sweep())
    text = "\n".join(lines)
    rows = [line for line in lines if line.startswith(("tp1 ", "tp2 ", "pp2"))]
    assert len(rows) == 2 + 2 + 2  # every step, plus the error row of pp2
    assert "out tok/s" in lines[1] and "TTFT p99" in lines[1] and "goodput/s" in lines[1]
    tp2_c4 = next(r for r in rows if r.startswith("tp2") and " 1100.0" in r)
    assert "tp2 pp1 ep1 x1, 2 bundles STRICT_PACK" in tp2_c4 and "45.0" in tp2_c4 and "90.0" in tp2_c4  # p50, p99
    assert "tp2 at concurrency 4" in best_line(_sweep())  # most in-SLO tok/s: 1100 / 2
    assert "error: pp2:enforce_eager=false: RuntimeError: engine died" in text


def test_throughput_is_also_given_per_accelerator():
    import re

    lines = table_lines(_sweep())
    assert "accel" in lines[1] and "tok/s/accel" in lines[1]
    tp2_c4 = next(line for line in lines if line.startswith("tp2") and " 1100.0" in line)
    assert re.search(r"1100\.0\s+2\s+550\.0\s", tp2_c4)  # tp2 holds 2 accelerators: 1100 / 2 per accelerator


def test_report_writes_pngs_and_a_self_contained_html(tmp_path):
    (tmp_path / "tp1" / "c4").mkdir(parents=True)
    (tmp_path / "tp1" / "c4" / "report.html").write_text("locust")
    files = write_report(_sweep(), tmp_path)
    for png in (files.throughput_png, files.latency_png, files.goodput_png):
        data = png.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5_000, png
    page = files.html.read_text()
    assert page.count('src="data:image/png;base64,') == 3  # embedded: the page is one file
    assert "<td>tp2</td>" in page and "<td>1100.0</td>" in page
    assert "TTFT &lt;= 500 ms and TPOT &lt;= 50 ms" in page
    assert 'href="tp1/c4/report.html"' in page  # Locust's report of each step at hand
    assert 'href="tp1/c1/report.html"' not in page  # no dead links
    elsewhere = write_report(_sweep(), tmp_path / "copy", sweep_dir=tmp_path).html.read_text()
    assert 'href="../tp1/c4/report.html"' in elsewhere


def test_sweep_json_round_trips_with_its_schema_beside_it(tmp_path):
    import jsonschema

    sweep = _sweep()
    path = write_sweep(sweep, tmp_path)
    assert load_sweep(tmp_path) == sweep == load_sweep(path)
    schema = json.loads((tmp_path / "sweep.schema.json").read_text())
    jsonschema.validate(json.loads(path.read_text()), schema)


def test_sweep_schema_file_is_current():
    assert SCHEMA_FILE.exists() and SCHEMA_FILE.read_text() == schema_text(), (
        "loadtest/sweep.schema.json is stale; regenerate: python -c \"from loadtest.sweep_results import schema_text; "
        "print(schema_text(), end='')\" > loadtest/sweep.schema.json")


def test_load_sweep_names_the_file(tmp_path):
    with pytest.raises(LoadTestError, match="sweep.json: cannot read"):
        load_sweep(tmp_path)
    (tmp_path / "sweep.json").write_text('{"kind": "other"}')
    with pytest.raises(LoadTestError, match="not a fleetserve sweep.json"):
        load_sweep(tmp_path)


def _write_log(path: Path, records) -> None:
    path.mkdir(parents=True)
    (path / "requests.jsonl").write_text("".join(r.model_dump_json() + "\n" for r in records))


def _write_all_logs(root: Path, sweep) -> None:
    for s in sweep.strategies:
        for st in s.steps:
            if not (root / st.run_dir).exists():
                _write_log(root / st.run_dir, LOG)


def test_with_slo_rescores_goodput_from_the_request_logs(tmp_path):
    sweep = _sweep()
    _write_all_logs(tmp_path, sweep)
    rescored = with_slo(sweep, tmp_path, Slo(ttft_ms=None, tpot_ms=None))
    step = rescored.strategies[0].steps[0]
    assert step.goodput.requests_meeting_slo == 5 and step.goodput.requests_per_s == pytest.approx(0.5)  # 10 s step
    assert rescored.slo == Slo(ttft_ms=None, tpot_ms=None)


def test_rescoring_without_request_logs_refuses_naming_them(tmp_path):
    _write_log(tmp_path / "tp1" / "c1", LOG)  # one step has its log, the others not
    with pytest.raises(LoadTestError, match=r"cannot re-score at TTFT <= 40 ms.*no per-request log \(e.g. .*tp1/c4"):
        with_slo(_sweep(), tmp_path, Slo(ttft_ms=40, tpot_ms=50))


def test_report_command_refuses_the_shipped_example_at_another_slo(tmp_path):
    from conftest import REPO
    from loadtest.cli import cli

    res = CliRunner().invoke(cli, ["report", str(REPO / "docs/sweep-example"), "--ttft-slo-ms", "40", "-o", str(tmp_path)])
    assert res.exit_code == 2, res.output
    assert "no per-request log" in res.output and "in SLO" not in res.output
    assert not (tmp_path / "report.html").exists()


def test_report_command_prints_the_table_and_writes_the_files(tmp_path):
    from loadtest.cli import cli

    write_sweep(_sweep(), tmp_path)
    _write_all_logs(tmp_path, _sweep())
    res = CliRunner().invoke(cli, ["report", str(tmp_path), "--ttft-slo-ms", "0", "--tpot-slo-ms", "50"])
    assert res.exit_code == 0, res.output
    assert "TPOT <= 50 ms" in res.output and "tp2 pp1 ep1 x1" in res.output
    assert (tmp_path / "report.html").exists() and (tmp_path / "throughput.png").read_bytes()[:8] == PNG_MAGIC
    res = CliRunner().invoke(cli, ["report", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "cannot read" in res.output


def test_report_and_sweep_modules_import_neither_matplotlib_ray_nor_locust():
    code = ("import sys, loadtest, loadtest.report, loadtest.sweep, loadtest.sweep_results, loadtest.strategies, "
            "loadtest.timeline, loadtest.scraper; "
            "bad = [m for m in ('locust', 'gevent', 'ray', 'vllm', 'matplotlib') if m in sys.modules]; "
            "print(bad); sys.exit(bool(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
