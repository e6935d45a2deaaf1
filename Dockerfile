# The router image. Build:  docker build -t inference-router .
# Run:    docker run -p 8080:8080 -e ROUTER_API_KEY=sk-... -e ROUTER_ADMIN_KEY=sk-admin-... \
#             inference-router serve --config /app/configs/docker.toml
# Your own config: add -v $PWD/my-configs:/etc/router:ro and --config /etc/router/router.toml
# (tests/test_packaging.py checks that the config of the first example exists).
# A pinned tag: a rebuild gets the same Python and Debian release, not whatever 3.11 is now.
FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin router

WORKDIR /app
COPY pyproject.toml README.md ./
COPY router ./router
COPY workers ./workers
COPY configs ./configs
RUN pip install . && rm -rf /root/.cache

# Numeric, so Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
USER 10001
# Listen on every interface inside the container; the port matches the Vast SDK's default.
ENV ROUTER_SERVER_HOST=0.0.0.0 \
    ROUTER_SERVER_PORT=8080
EXPOSE 8080

HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/livez', timeout=2).status == 200 else 1)"]

ENTRYPOINT ["inference-router"]
CMD ["serve"]
