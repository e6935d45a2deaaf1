"""Locust users for the router: ticket mode, proxied JSON, and proxied streams.

    locust -f bench/locustfile.py --host http://127.0.0.1:8080 --headless -u 20 -r 5 -t 60s

Environment: ROUTER_API_KEY (default dev-key), ROUTER_ENDPOINT (default demo),
LOCUST_MAX_NEW_TOKENS (default 16), LOCUST_WAIT_S (seconds between a user's requests,
default 0.5), LOCUST_TIMEOUT_S (per request, default 30). `bench/run_locust.sh` starts a
local stack and runs this headless; point `--host` at a real deployment to load it.

Each request type has its own name in the CSV, and every failure message starts with its
kind, so the failures CSV groups them: `connect`, `timeout`, `http 4xx/5xx`, `429`,
`no worker`, `stream cut`.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

import orjson
import requests
from locust import HttpUser, between, events, task

API_KEY = os.environ.get("ROUTER_API_KEY", "dev-key")
ENDPOINT = os.environ.get("ROUTER_ENDPOINT", "demo")
MAX_NEW_TOKENS = int(os.environ.get("LOCUST_MAX_NEW_TOKENS", "16"))
WAIT_S = float(os.environ.get("LOCUST_WAIT_S", "0.5"))
TIMEOUT_S = float(os.environ.get("LOCUST_TIMEOUT_S", "30"))
FAILURE_LOG = os.environ.get("LOCUST_FAILURE_LOG")  # soak.sh: when each failure happened
PROMPTS = ["What is deep learning?", "Write a haiku about GPUs.", "Explain load balancing."]


@events.request.add_listener
def _log_failure(request_type: str, name: str, exception: Exception | None, **_: Any) -> None:
    if exception is not None and FAILURE_LOG:
        with open(FAILURE_LOG, "a") as f:
            f.write(f"{time.time():.3f}\t{name}\t{exception}\n")


def failure_kind(resp: Any) -> str | None:
    """The failure kind of a finished response, or None if it succeeded."""
    if resp.error is not None and resp.status_code == 0:
        err = repr(resp.error)
        return (
            f"timeout: {type(resp.error).__name__}"
            if "Timeout" in err
            else f"connect: {type(resp.error).__name__}"
        )
    if resp.status_code == 429:
        return "429: rate or queue limit"
    if resp.status_code >= 400:
        code = ""
        try:
            code = resp.json()["error"]["code"]
        except Exception:  # not our JSON error envelope
            pass
        return f"http {resp.status_code}: {code}"
    return None


class _RouterUser(HttpUser):
    abstract = True
    wait_time = between(WAIT_S * 0.5, WAIT_S * 1.5)

    def payload(self) -> dict[str, Any]:
        return {"inputs": random.choice(PROMPTS), "parameters": {"max_new_tokens": MAX_NEW_TOKENS}}


class TicketUser(_RouterUser):
    """Ticket mode: POST /route, then call the worker with the ticket (Vast's shape)."""

    @task
    def route_then_generate(self) -> None:
        with self.client.post(
            "/route/",
            name="ticket: POST /route",
            catch_response=True,
            timeout=TIMEOUT_S,
            json={"endpoint": ENDPOINT, "api_key": API_KEY, "cost": MAX_NEW_TOKENS},
        ) as resp:
            kind = failure_kind(resp)
            if kind:
                resp.failure(kind)
                return
            ticket = resp.json()
            if "url" not in ticket:
                resp.failure("no worker: /route answered without a url")
                return
        with self.client.post(
            f"{ticket['url']}/generate",
            name="ticket: POST worker /generate",
            catch_response=True,
            timeout=TIMEOUT_S,
            json={"auth_data": ticket, "payload": self.payload()},
        ) as resp:
            kind = failure_kind(resp)
            if kind:
                resp.failure(kind)
            elif "generated_text" not in resp.text:
                resp.failure("http 200: answer without generated_text")


class ProxyJsonUser(_RouterUser):
    """Proxy mode, one JSON answer: POST /{endpoint}/generate through the router."""

    @task
    def generate(self) -> None:
        with self.client.post(
            f"/{ENDPOINT}/generate",
            name="proxy: POST /{endpoint}/generate",
            catch_response=True,
            timeout=TIMEOUT_S,
            json=self.payload(),
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as resp:
            kind = failure_kind(resp)
            if kind:
                resp.failure(kind)
            elif "generated_text" not in resp.text:
                resp.failure("http 200: answer without generated_text")


class ProxyStreamUser(_RouterUser):
    """Proxy mode, streamed: the OpenAI chat path with stream=true, read to [DONE].

    Its row times the whole stream, to `[DONE]` (locust alone would time the response
    headers, which a streaming server sends at once), and counts the bytes read.
    """

    @task
    def chat_stream(self) -> None:
        body = {
            "model": ENDPOINT,
            "stream": True,
            "max_tokens": MAX_NEW_TOKENS,
            "messages": [{"role": "user", "content": random.choice(PROMPTS)}],
        }
        started = time.perf_counter()
        with self.client.post(
            "/v1/chat/completions",
            name="proxy: stream /v1/chat/completions",
            catch_response=True,
            timeout=TIMEOUT_S,
            stream=True,
            json=body,
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as resp:
            kind = failure_kind(resp)
            if kind:
                resp.failure(kind)
                return
            chunks, done, size = 0, False, 0
            try:
                for line in resp.iter_lines():
                    size += len(line)
                    if line.startswith(b"event: error"):
                        break
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        done = True
                        break
                    orjson.loads(data)
                    chunks += 1
            except (requests.RequestException, orjson.JSONDecodeError) as exc:
                resp.failure(f"stream cut: {type(exc).__name__}")
                return
            finally:
                # reported when the `with` exits: the time to [DONE] (or to the cut)
                resp.request_meta["response_time"] = (time.perf_counter() - started) * 1000
                resp.request_meta["response_length"] = size
            if not done or chunks == 0:
                resp.failure("stream cut: ended without [DONE]")
