"""The one Ray lifecycle (cluster.ray_cluster), as `fleetserve loadtest sweep` uses it: real local Rays.

The sweep used to start Ray's dashboard whatever `local_ray.dashboard` said (its own copy of the
lifecycle); it now starts Ray through the same ensure_ray as `fleetserve serve`. Each case runs
in a fresh process so the Ray it starts is that process's children, and stops with it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

_SCRIPT = """
import json, sys
import psutil
from cluster.ray_cluster import ray_session
from serve_app.schema import parse_config

local_nodes, dashboard = int(sys.argv[1]), sys.argv[2] == "1"
cfg = parse_config({"name": "life", "local_ray": {"dashboard": dashboard}, "models": [{
    "name": "m", "source": "tiny:dense", "engine": "sim", "placement": {"accelerator": "CPU"}}]})
# The sweep CLI's call (loadtest/cli.py): the config, the cluster shape, the strategies to fit.
with ray_session(cfg, address=None, local_nodes=local_nodes, cpus_per_node=2, size_for=[cfg]) as session:
    tree = []
    for child in psutil.Process().children(recursive=True):
        try:
            tree.append(" ".join(child.cmdline()))
        except psutil.Error:
            pass
    print(json.dumps({"label": session.label, "started": session.started, "tree": tree}))
"""


def _session_tree(local_nodes: int, dashboard: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": ""}
    out = subprocess.run([sys.executable, "-c", _SCRIPT, str(local_nodes), "1" if dashboard else "0"], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("local_nodes", [0, 2], ids=["local", "two-node-cluster"])
def test_the_sweeps_ray_has_no_dashboard_unless_the_config_asks(local_nodes):
    seen = _session_tree(local_nodes, dashboard=False)
    assert seen["started"] and seen["label"].startswith("local")
    assert sum("raylet" in c for c in seen["tree"]) == max(1, local_nodes), seen["tree"]  # the tree is Ray's
    assert not [c for c in seen["tree"] if "ray-dashboard-" in c]


def test_local_ray_dashboard_true_starts_it():
    # The check above is not vacuous: the same tree has the dashboard's processes when asked.
    seen = _session_tree(0, dashboard=True)
    assert [c for c in seen["tree"] if "ray-dashboard-" in c], seen["tree"]
