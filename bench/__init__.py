"""The benchmark harness (``make bench``, ``python -m bench``): docs/performance.md.

It starts the real stack on this machine (gunicorn, Celery worker and beat, the
sandbox gateway) against a database and a RabbitMQ vhost of its own, runs the
workloads of issue 6 and writes JSON, PNG plots and a Markdown summary.

Nothing here is imported by the product: ``bench.settings`` (used only by the
processes the harness starts) adds a no-op DRF endpoint and a no-op Celery task,
the references every machine-dependent figure is compared with.
"""
