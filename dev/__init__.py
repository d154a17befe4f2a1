"""The development tooling: ``orders run`` (``make run``), ``orders bench``
(``make bench``), the embedded NATS and Redis servers and the project's processes
started as children, which the tests and the benchmark use.

Not packaged (``pyproject.toml`` installs ``orders``, ``bridge`` and ``relay``
only) and not in the image: it exists in a source checkout alone. Nothing in
``orders/`` or ``bridge/`` imports it (an import-linter contract); the ``orders``
console script finds ``run`` and ``bench`` here only when they are invoked
(``bridge/cli/_dev_commands.py``).
"""
