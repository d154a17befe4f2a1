"""``orders bench`` (``make bench``): how fast the pipeline is on this machine, next
to what its parts can do alone.

One run starts its own embedded NATS and Redis and its own processes, and measures
on the same servers: the JetStream ceiling (consume and ack, no work), a naive
Celery chord with trivial tasks (no NATS), the pipeline's throughput at saturation
and its latency at 70 % of it, scaling with worker concurrency and a second
bridge, and the memory and CPU of the bridge and workers with 10,000 orders in
flight.

- :mod:`dev.bench.stack`: servers and the real ``orders-bridge`` /
  ``orders-worker`` processes (and the naive baseline's Celery worker);
- :mod:`dev.bench.procfs`: memory and CPU of a process tree, read from ``/proc``;
- :mod:`dev.bench.load`: synthetic orders, publishing, waiting, timestamps;
- :mod:`dev.bench.naive` / :mod:`dev.bench.naive_worker`: the naive
  baseline's Celery app and the module its worker loads;
- :mod:`dev.bench.phases`: one module per measurement;
- :mod:`dev.bench.runner`: the phases in order, with progress;
  :mod:`dev.bench.cli`: the ``orders bench`` command;
- :mod:`dev.bench.report`: the JSON document and the table;
  :mod:`dev.bench.plot`: the PNG and :mod:`dev.bench.profile`: py-spy
  profiles (both need the ``[bench]`` extra).
"""
