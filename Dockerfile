# One image for the three process types of the Procfile; compose.yaml picks the
# command (orders-bridge, orders-worker or orders-web).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Only what the package needs: no tests, dev tools or local virtualenv.
COPY pyproject.toml README.md ./
COPY orders ./orders
COPY bridge ./bridge
RUN pip install . \
    && useradd --system --uid 10001 --user-group --no-create-home --home-dir /app orders

USER orders
EXPOSE 8080
CMD ["orders-bridge"]
