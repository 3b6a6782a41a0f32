"""Policies as the replay calls them: fleetserve's `decide` and Serve's default, each with its own clock.

Pure. A runner holds its policy's typed state between calls and, for `decide`, can keep every
Decision (the audit records a live run would have logged) and evaluate shadow policies on the
same observations, as the live adapter does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from serve_app.autoscaling.policy import Decision, Observation, PolicyState, decide, due
from serve_app.autoscaling.serve_default import SERVE_CONTROL_LOOP_S, ServeDefaultState, serve_default_decide
from serve_app.schema import AutoscalingConfig

__all__ = ["QueueDepthRunner", "ServeDefaultRunner", "runner_for"]


@dataclass
class QueueDepthRunner:
    """fleetserve's queue-depth policy, decided every policy_interval_s."""

    name: str
    config: AutoscalingConfig
    keep_decisions: bool = False
    decisions: list[Decision] = field(default_factory=list)
    state: PolicyState = field(default_factory=PolicyState)

    @property
    def tick_s(self) -> float:
        """Serve calls every 0.1 s and `due` lets one call per interval through; call at the interval."""
        return max(self.config.policy_interval_s, SERVE_CONTROL_LOOP_S)

    def __call__(self, obs: Observation) -> int:
        if not due(self.state, obs.now_s, self.config):
            return obs.target_replicas
        d = decide(obs, self.state, self.config)
        self.state = d.state
        if self.keep_decisions:
            self.decisions.append(d)
        return d.target_replicas


@dataclass
class ServeDefaultRunner:
    """Ray Serve's request-based default policy (serve_default.py), called every control loop (0.1 s)."""

    name: str
    config: AutoscalingConfig
    state: ServeDefaultState = field(default_factory=ServeDefaultState)
    tick_s: float = SERVE_CONTROL_LOOP_S

    def __call__(self, obs: Observation) -> int:
        n, self.state = serve_default_decide(obs, self.state, self.config)
        return n


def runner_for(name: str, cfg: AutoscalingConfig, *, keep_decisions: bool = False) -> QueueDepthRunner | ServeDefaultRunner:
    """Build the runner `cfg.policy` names."""
    if cfg.policy == "serve_default":
        return ServeDefaultRunner(name, cfg)
    return QueueDepthRunner(name, cfg, keep_decisions=keep_decisions)
