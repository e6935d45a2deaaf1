"""Locust users and a load shape for bench/autoscale_e2e.py: a step 0 -> N -> 0 of
streaming users against one endpoint, each request's outcome written to LOCUST_EVENTS.

STEP_USERS (12), STEP_HOLD_S (40): users during the step and for how long; 5 s of no
load before it. ROUTER_API_KEY, ROUTER_ENDPOINT as in bench/locustfile.py. Each line of
LOCUST_EVENTS: start (s since the test began), outcome ("ok" or why not), status,
time to first token (s), total (s).
"""

from __future__ import annotations

import os
import time

from locust import HttpUser, LoadTestShape, constant, task

API_KEY = os.environ.get("ROUTER_API_KEY", "dev-key")
ENDPOINT = os.environ.get("ROUTER_ENDPOINT", "scaled")
USERS = int(os.environ.get("STEP_USERS", "12"))
HOLD_S = float(os.environ.get("STEP_HOLD_S", "40"))
EVENTS = os.environ.get("LOCUST_EVENTS", "events.csv")
BEGIN = time.monotonic()


class StepShape(LoadTestShape):
    def tick(self) -> tuple[int, float] | None:
        t = self.get_run_time()
        if t < 5:
            return 0, 100
        if t < 5 + HOLD_S:
            return USERS, 100
        return None  # the step down to 0: locust stops its users (in-flight ones finish)


class StreamUser(HttpUser):
    wait_time = constant(0.5)

    @task
    def stream(self) -> None:
        start = time.monotonic()
        first = None
        outcome, status = "ok", 0
        with self.client.post(
            f"/{ENDPOINT}/generate_stream",
            json={"inputs": "Explain load balancing.", "parameters": {"max_new_tokens": 16}},
            headers={"Authorization": f"Bearer {API_KEY}"},
            stream=True,
            catch_response=True,
            name="stream",
            timeout=90,
        ) as resp:
            status = resp.status_code
            try:
                if status != 200:
                    outcome = f"http {status}"
                else:
                    tokens = 0
                    for line in resp.iter_lines():
                        if line.startswith(b"data:"):
                            tokens += 1
                            if first is None:
                                first = time.monotonic() - start
                    if tokens < 16:
                        outcome = f"cut after {tokens} tokens"
            except Exception as exc:  # a broken stream is a lost request here
                outcome = f"error {type(exc).__name__}"
            if outcome == "ok":
                resp.success()
            else:
                resp.failure(outcome)
        total = time.monotonic() - start
        with open(EVENTS, "a") as f:
            f.write(f"{start - BEGIN:.3f},{outcome},{status},{first or 0:.4f},{total:.4f}\n")
