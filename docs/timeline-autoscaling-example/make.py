"""Re-make this example: a spike of load on a simulator-engine app that autoscales 1 -> 4, scraped into the timeline.

    python docs/timeline-autoscaling-example/make.py      (from the repo root; starts its own local Ray)

The app: one `engine: sim` model (2 sequences per replica, 50 ms per decode step, 0.5 s start-up),
the queue-depth policy with target 1 waiting request per replica; Ray's processes export metrics
every second (RAY_metrics_report_interval_ms=1000). The load: 1 user, 12 users from 5 s to 17 s,
1 user to 30 s. Goodput is scored at TPOT <= 60 ms (the simulator's decode step is 50 ms).
"""

import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
os.environ["RAY_metrics_report_interval_ms"] = "1000"  # before Ray starts: 1 s series

import conftest  # noqa: E402,F401 - the test env (fast autoscaling metric pushes)
from conftest import free_port  # noqa: E402
from ray import serve  # noqa: E402

from cluster.ray_cluster import ensure_ray  # noqa: E402
from loadtest import Slo, build_plan, run  # noqa: E402
from loadtest.timeline import write_run_report  # noqa: E402
from serve_app.app import build_application  # noqa: E402
from serve_app.schema import parse_config  # noqa: E402

port, metrics_port = free_port(), free_port()
sim = {"startup_s": 0.5, "max_num_seqs": 2, "decode_step_base_s": 0.05, "decode_step_per_seq_s": 0.0,
       "prefill_s_per_token": 0.0}
cfg = parse_config({"name": "scale-demo", "http": {"port": port}, "local_ray": {"metrics_export_port": metrics_port},
    "models": [{"name": "sim-burst", "source": "tiny:dense", "engine": "sim", "sim": sim, "max_model_len": 512,
        "placement": {"accelerator": "CPU", "cpus_per_worker": 0.5},
        "autoscaling": {"policy_interval_s": 0.5, "metrics_push_interval_s": 0.5, "metrics_look_back_s": 1.5,
            "min_replicas": 1, "max_replicas": 4, "target_queue_per_replica": 1, "upscale_stabilization_s": 1.0,
            "upscale_cooldown_s": 1, "panic_threshold": 50, "downscale_stabilization_s": 5.0,
            "downscale_cooldown_s": 1, "max_step_down": 2}}]})
session = ensure_ray(cfg)
try:
    serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
    serve.run(build_application(cfg), name=cfg.name, route_prefix="/")
    plan = build_plan(models=["sim-burst"], shape="spike", users=1, spike_users=12, spike_at_s=5, spike_s=12,
                      duration_s=30, drain_s=5, input_len=16, output_len=8, progress_interval_s=5)
    tmp = HERE / "run"
    r = run(f"http://127.0.0.1:{port}", plan, out_dir=tmp, workers=0,
            metrics=[f"http://127.0.0.1:{metrics_port}/metrics"])
    for name in ("results.json", "requests.jsonl", "plan.json"):
        shutil.copy(tmp / name, HERE / name)
    shutil.rmtree(tmp)
    print(write_run_report(HERE, slo=Slo(ttft_ms=500, tpot_ms=60)))
finally:
    session.close()
