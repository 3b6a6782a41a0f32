"""Locustfile for LLM load: `locust -f loadtest/locustfile.py --host URL --model NAME [-u N -r R -t 60s]`.

Plan options (listed in loadtest/README.md and `locust_hooks.add_arguments`; Locust prints
--help before it loads a locustfile, so they are not in it): --shape
constant|step|spike|poisson|trace, --rate, --trace, --input-len, --output-len, --dataset,
--seed, --endpoint, --app-config, or a whole plan with --plan FILE. `fleetserve loadtest run`
drives this same file as a master and N workers. Headless runs end by the plan's duration
plus its drain (the shape stops the test), so -t ends sending and the drain lets requests in
flight finish and reach the stats.
"""

from locust import events

from loadtest.locust_hooks import PlanShape, register
from loadtest.users import LLMUser

__all__ = ["LLMUser", "PlanShape"]

register(events)
