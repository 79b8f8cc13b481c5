# Multi-stage: build the wheel (C compiler, Cython) in one stage, run it slim,
# non-root, under tini (PID 1, forwards SIGHUP/SIGTERM to the master), logging
# to stdout. Listens on 8080/8443, admin 9100.
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc g++ libc6-dev \
    libnghttp2-dev libre2-dev pkg-config && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY lbcore ./lbcore
COPY lbcore_ext ./lbcore_ext
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends tini libnghttp2-14 libre2-9 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/lbcore --create-home lbcore
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER lbcore
# LBCORE_ADMIN_PORT: where HEALTHCHECK finds the admin endpoint; set it to the
# config's load_balancer.admin.port when that is not 9100 (`docker run -e`).
ENV LBCORE_STATE_DIR=/var/lib/lbcore PYTHONUNBUFFERED=1 LBCORE_ADMIN_PORT=9100
EXPOSE 8080 8443 9100
# Liveness from the admin endpoint (on 127.0.0.1 inside the container).
HEALTHCHECK --interval=10s --timeout=3s --retries=3 CMD python -c \
    "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' \
    % os.environ['LBCORE_ADMIN_PORT'], timeout=2)"
ENTRYPOINT ["tini", "--", "lbcore"]
# The embedded demo by default; mount a config and run `run -c /etc/lbcore/lb.yaml`.
CMD ["demo"]
