# One image for the three process types of the Procfile; compose.yaml picks the
# command (orders-bridge, orders-worker or orders-web).
#
# Two stages: the build stage installs the locked runtime dependencies
# (requirements/runtime.lock, no dev tools, no embedded servers) and the package
# into a virtualenv; the final image is a slim Python with that virtualenv only,
# run as an unprivileged user.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
# Dependencies first: this layer is rebuilt only when the lock changes.
COPY requirements/runtime.lock requirements/runtime.lock
RUN /opt/venv/bin/pip install --require-virtualenv -r requirements/runtime.lock
COPY pyproject.toml README.md ./
COPY orders ./orders
COPY bridge ./bridge
COPY relay ./relay
RUN /opt/venv/bin/pip install --no-deps .

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /app orders
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
USER orders
EXPOSE 8080
CMD ["orders-bridge"]
