"""A minimal upstream for proxy benchmarks: small JSON answers and timed SSE streams.

    python bench/upstream.py --port 3900

`POST /echo` answers a small JSON body at once; `POST /stream?chunks=256&interval_ms=2`
sends that many SSE events, one every interval (each carries its send time, so a client
can measure per-chunk delay); `GET /readyz` is the router's health check, and so is
`GET /w/{i}/readyz`: a fleet of virtual workers `http://HOST:PORT/w/{i}` on one port
(bench/scale_bench.py).
"""

from __future__ import annotations

import argparse
import asyncio
import time

from aiohttp import web

_READY = b'{"ready": true, "inflight_cost": 0, "inflight_requests": 0, "max_reqnum_seen": 0}'


async def echo(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=b'{"ok":true,"text":"hello"}', content_type="application/json")


async def stream(request: web.Request) -> web.StreamResponse:
    chunks = int(request.query.get("chunks", "256"))
    interval = float(request.query.get("interval_ms", "2")) / 1000
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    start = time.perf_counter()
    for i in range(chunks):
        # sleep to an absolute schedule so upstream jitter does not accumulate
        await asyncio.sleep(max(0.0, start + i * interval - time.perf_counter()))
        await resp.write(b"data: %d %.6f\n\n" % (i, time.time()))
    await resp.write_eof()
    return resp


async def readyz(request: web.Request) -> web.Response:
    return web.Response(body=_READY, content_type="application/json")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    app = web.Application()
    app.router.add_post("/echo", echo)
    app.router.add_post("/stream", stream)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/w/{i}/readyz", readyz)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
