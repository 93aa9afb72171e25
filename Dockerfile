# poller: one container, every stream of /etc/poller/*.yaml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    POLLER_HTTP_PORT=8080

WORKDIR /app
COPY pyproject.toml README.md ./
COPY poller ./poller
RUN pip install . \
 && useradd --system --uid 10001 --home-dir /var/lib/poller --create-home poller \
 && mkdir -p /etc/poller \
 && chown poller /var/lib/poller

USER poller
WORKDIR /var/lib/poller
EXPOSE 8080

# ECS stops a task with SIGTERM and waits 30 s; poller drains within 25 s.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('POLLER_HTTP_PORT', '8080'), timeout=2)"]

ENTRYPOINT ["poller"]
CMD ["run", "--config", "/etc/poller"]
