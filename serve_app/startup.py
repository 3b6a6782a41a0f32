"""Wait for a deployed app to run, and turn a replica's start-up failure into one short message.

Serve retries a replica whose constructor raises (three times per replica) and reports the
failure only in its status message, as the remote traceback: `serve.run` then ends in a
~100-line Ray traceback, or waits while the replica restarts. Here we poll Serve's status
with a deadline instead:

    serve.status() ──► per deployment: "A replica failed to start ... Error:\\n<traceback>"
                   ──► failure_cause(traceback) = the last exception line, ours or vLLM's
                   ──► fleetserve's own error (deterministic: a retry fails the same way) → stop now
                       anything else → stop when Serve gives up (DEPLOY_FAILED) or the deadline passes

`failure_cause` is pure so its cases are a table in the tests.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from serve_app.errors import FleetserveError

__all__ = ["DeployFailed", "ReplicaFailure", "failure_cause", "wait_until_running", "LOG_HINT"]

# Where Ray keeps the controller's and replicas' logs, on the head node (Ray's default --temp-dir).
LOG_HINT = "/tmp/ray/session_latest/logs/serve/ on the head node"

# A traceback's exception line: "pkg.mod.SomeError: message" or "SomeError: message".
_EXC_LINE = re.compile(r"^(?P<type>[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt))(?:\((?P<inner>\w+)\))?: ?(?P<msg>.*)$")
_OURS = "serve_app.errors."
_MAX_CAUSE_CHARS = 500


@dataclass(frozen=True)
class ReplicaFailure:
    """Why a replica failed to start, read from Serve's status message."""

    cause: str  # "<ExceptionType>: <message>" of ours, else of the outermost exception
    ours: bool  # raised by fleetserve on purpose (config/engine/source): the same on every retry


class DeployFailed(FleetserveError):
    """A deployment could not start; the message names the model and the cause."""


def failure_cause(message: str) -> ReplicaFailure | None:
    """Return the cause in a Serve status message about a failed replica, or None if it has none.

    The exception line of ours (serve_app.errors.*) wins; else the last exception line of the
    traceback, which Python prints last for the outermost exception.
    """
    if "Error" not in message and "Exception" not in message:
        return None
    lines = [ln.strip() for ln in message.splitlines()]
    found = []
    for i, ln in enumerate(lines):
        m = _EXC_LINE.match(ln)
        if not m or m.group("type").startswith("ray::"):
            continue
        msg = m.group("msg")
        # A multi-line message continues until the next blank or traceback line.
        for more in lines[i + 1:]:
            if not more or more.startswith(("Traceback", "File ", "The above exception", "During handling")):
                break
            msg += " " + more
        found.append((m.group("type"), msg.strip()))
    if not found:
        return None
    ours = [f for f in found if f[0].startswith(_OURS)]
    kind, msg = (ours or found)[-1]
    short = kind.rsplit(".", 1)[-1]
    alerts = re.findall(r"\[ALERT\]\s*\(\d+\)\s*:\s*(.*?)(?=\[(?:ALERT|NOTICE|WARNING)\]|$)", msg)
    if alerts:  # HAProxy's start-up log: its ALERT lines say why, the NOTICEs around them do not
        msg = msg.split("[", 1)[0].strip() + " " + " ".join(a.strip() for a in alerts)
    if len(msg) > _MAX_CAUSE_CHARS:  # e.g. pydantic's multi-error dumps: the logs have the rest
        msg = msg[:_MAX_CAUSE_CHARS] + " ..."
    return ReplicaFailure(cause=f"{short}: {msg}" if msg else short, ours=bool(ours))


def wait_until_running(app_name: str, *, models: dict[str, str], timeout_s: float | None,
                       poll_s: float = 0.5) -> None:
    """Block until Serve reports `app_name` RUNNING; raise DeployFailed naming the model and cause.

    `models` maps deployment names to model names. `timeout_s` None waits as long as Serve
    keeps retrying (its retry budget bounds a failing constructor; a hanging one is bounded
    only by a deadline).
    """
    from ray import serve

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    last: dict[str, str] = {}
    while True:
        app = serve.status().applications.get(app_name)
        if app is not None:
            if app.status == "RUNNING":
                return
            for dep_name, dep in app.deployments.items():
                last[dep_name] = dep.message or ""
                failure = failure_cause(dep.message or "")
                gave_up = dep.status in ("DEPLOY_FAILED", "UNHEALTHY")
                if failure and (failure.ours or gave_up):
                    raise DeployFailed(_message(models.get(dep_name, dep_name), failure.cause, gave_up=gave_up))
            if app.status == "DEPLOY_FAILED":
                raise DeployFailed(f"application {app_name!r} failed to deploy: {_first_line(app.message)}. "
                                   f"Full logs: {LOG_HINT}")
        if deadline is not None and time.monotonic() > deadline:
            pending = ", ".join(f"{models.get(d, d)} ({_first_line(m) or 'starting'})" for d, m in last.items())
            raise DeployFailed(f"application {app_name!r} was not running after {timeout_s:g} s: {pending}. "
                               f"Full logs: {LOG_HINT}")
        time.sleep(poll_s)


def _message(model: str, cause: str, *, gave_up: bool) -> str:
    when = "after Serve's retries" if gave_up else "(not retried: it fails the same way every time)"
    return f"model {model!r} failed to start {when}: {cause}\nFull traceback: {LOG_HINT} (controller_*.log, replica_*.log)"


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""
