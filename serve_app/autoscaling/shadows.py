"""Shadow policies: candidates decided on the live observations beside the active policy, recorded only.

Pure. The Serve adapter calls `evaluate` after the active decision, with the same Observation;
each shadow keeps its own typed state (serialized under the adapter's policy state) and its
answer goes into the audit record as `shadows`. No shadow ever changes the target. A shadow's
`target_replicas` starts from the live target each time (it cannot move the fleet), so read a
shadow as "what it would ask for now", and replay it (`autoscaler replay`) for what it would do.
"""

from __future__ import annotations

from typing import Any

from serve_app.autoscaling.audit import ShadowDecision
from serve_app.autoscaling.policy import Observation, PolicyState, decide
from serve_app.autoscaling.serve_default import ServeDefaultState, serve_default_decide
from serve_app.schema import AutoscalingConfig

__all__ = ["evaluate"]


def evaluate(obs: Observation, cfg: AutoscalingConfig,
             states: dict[str, Any] | None) -> tuple[tuple[ShadowDecision, ...], dict[str, Any]]:
    """Decide every shadow of `cfg` on `obs`; return their records (for the audit) and their new states."""
    states = dict(states or {})
    out = []
    for name in cfg.shadow_policies:
        shadow = cfg.shadow(name)
        if shadow.policy == "serve_default":
            st = ServeDefaultState(**(states.get(name) or {}))
            n, st = serve_default_decide(obs, st, shadow)
            states[name] = {"decision_counter": st.decision_counter, "decision_timestamp": st.decision_timestamp}
            out.append(ShadowDecision(name=name, policy=shadow.policy, target_replicas=n))
            continue
        d = decide(obs, PolicyState.from_dict(states.get(name)), shadow)
        states[name] = d.state.to_dict()
        out.append(ShadowDecision(name=name, policy=shadow.policy, target_replicas=d.target_replicas,
                                  raw_desired=d.raw_desired, mode=d.mode, clamps=tuple(c.name for c in d.clamps)))
    return tuple(out), states
