"""`fleetserve autoscaler explain|replay|tune`: why the autoscaler did what it did, what another policy would do.

Thin shells over `fetch_records`, `audit.read_records`, `replay.replay`, `session`, `compare`,
`report` and `tune`, which tests call directly. Imports neither Ray nor vLLM. The replay
commands live in `_replay_cli.py` and register on this app.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from serve_app.autoscaling.audit import DecisionRecord, decision_record, format_table, read_records

__all__ = ["cli", "fetch_records", "load_records", "replay_records", "summarize"]

cli = typer.Typer(no_args_is_help=True, help="Queue-depth autoscaler: explain its decisions, replay traffic against policies, tune one to an SLO.")

HISTORY_PATH = "/-/autoscaler/{model}"


def fetch_records(url: str, model: str, *, last: int | None = None, api_key: str | None = None,
                  timeout_s: float = 10.0) -> list[DecisionRecord]:
    """GET `{url}/-/autoscaler/{model}` from a running app and return its decision records.

    Raises RuntimeError naming the URL and the status when the app does not answer with records.
    """
    import httpx

    full = url.rstrip("/") + HISTORY_PATH.format(model=model)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    params = {"last": last} if last else {}
    try:
        resp = httpx.get(full, params=params, headers=headers, timeout=timeout_s)
    except httpx.HTTPError as e:
        raise RuntimeError(f"GET {full} failed: {e}") from e
    if resp.status_code != 200:
        raise RuntimeError(f"GET {full} answered {resp.status_code}: {resp.text[:200]}")
    return read_records(resp.text) if resp.text.strip() else []


def load_records(path: str | Path, *, model: str | None = None) -> list[DecisionRecord]:
    """Read decision records from a JSON / JSONL file or a log file; keep `model`'s when given."""
    records = read_records(Path(path).expanduser().read_text())
    return [r for r in records if model is None or r.model == model]


def replay_records(trace_path: str | Path, config_path: str | Path | None, model: str | None, *,
                   startup_s: float = 60.0, tick_s: float | None = None,
                   slots_per_replica: int | None = None) -> list[DecisionRecord]:
    """Replay a trace through `model`'s policy from the config file; return one record per decision.

    Raises ConfigError for a bad config or trace, KeyError for an unknown model.
    """
    from serve_app.autoscaling.replay import load_trace, replay
    from serve_app.schema import load_config

    app = load_config(config_path)
    if model is None:
        if len(app.models) != 1:
            raise KeyError(f"the config serves {len(app.models)} models; pick one with --model: "
                           f"{', '.join(m.name for m in app.models)}")
        model = app.models[0].name
    try:
        policy = app.model(model).autoscaling
    except KeyError:
        raise KeyError(f"no model {model!r} in the config; known: {', '.join(m.name for m in app.models)}") from None
    decisions = replay(load_trace(trace_path), policy, startup_s=startup_s, tick_s=tick_s,
                       slots_per_replica=slots_per_replica)
    return [decision_record(d, model=model) for d in decisions]


def summarize(records: list[DecisionRecord]) -> str:
    """One line: decisions, scale-ups/downs, panics, replica range and replica-seconds."""
    if not records:
        return "0 decisions"
    ups = sum(r.direction == "up" for r in records)
    downs = sum(r.direction == "down" for r in records)
    panics = sum(r.mode == "panic" for r in records)
    targets = [r.target_replicas for r in records]
    replica_s = sum(a.target_replicas * (b.time_s - a.time_s) for a, b in zip(records, records[1:]))
    return (f"{len(records)} decisions, {ups} up, {downs} down, {panics} in panic; "
            f"replicas {min(targets)}..{max(targets)}, {replica_s:.0f} replica-seconds")


def echo_records(records: list[DecisionRecord], *, as_json: bool, why: bool, changes_only: bool) -> None:
    if as_json:
        for r in records:
            typer.echo(r.to_json())
        return
    typer.echo(format_table(records, why=why, changes_only=changes_only))
    typer.echo(summarize(records))


@cli.command("explain")
def explain(
    source: str = typer.Argument(..., help="URL of a running app (http://host:8000) or a file of decisions (JSON, JSONL, log)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model name; required with a URL."),
    last: int = typer.Option(50, "--last", min=1, help="Newest decisions to show."),
    why: bool = typer.Option(True, "--why/--no-why", help="Show each clamp's reason under its row."),
    changes_only: bool = typer.Option(False, "--changes-only", help="Skip holds that no clamp touched."),
    api_key: Optional[str] = typer.Option(None, "--api-key", help="Bearer token when the app requires one."),
    as_json: bool = typer.Option(False, "--json", help="Print the records as JSONL."),
) -> None:
    """Show recent autoscaling decisions with their inputs and every clamp applied, in order.

    Example: fleetserve autoscaler explain http://127.0.0.1:8000 -m tiny-dense --changes-only
    """
    try:
        if source.startswith(("http://", "https://")):
            if not model:
                raise typer.BadParameter("--model is required when reading from a running app", param_hint="--model")
            records = fetch_records(source, model, last=last, api_key=api_key)
            if not records:
                _check_served(source, model, api_key=api_key)
        else:
            records = load_records(source, model=model)
            if not records and model:
                known = sorted({r.model for r in load_records(source)})
                if known:
                    raise ValueError(f"{source} has no decisions of model {model!r}; it has {', '.join(known)}")
    except (OSError, ValueError, RuntimeError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from e
    if not records:
        # stdout stays valid (empty) JSONL for --json; the note goes to stderr.
        typer.echo(f"no autoscaling decisions yet for {model or source} (the policy records one per "
                   "decision interval once replicas report)", err=True)
        if not as_json:
            return
    echo_records(records[-last:], as_json=as_json, why=why, changes_only=changes_only)


def _check_served(url: str, model: str, *, api_key: str | None) -> None:
    """Raise RuntimeError when the app at `url` does not serve `model` (its history endpoint answers [] for any name)."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        resp = httpx.get(url.rstrip("/") + "/v1/models", headers=headers, timeout=10)
        served = [m["id"] for m in resp.json()["data"]] if resp.status_code == 200 else None
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        served = None
    if served is not None and model not in served:
        raise RuntimeError(f"{url} serves no model {model!r}; it serves {', '.join(served) or 'none'} (pass one with -m)")


from serve_app.autoscaling import _replay_cli  # noqa: E402,F401  (registers replay and tune on `cli`)
