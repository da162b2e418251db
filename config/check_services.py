"""Exit non-zero, loudly, unless the test suite's PostgreSQL, RabbitMQ and Redis answer."""

from __future__ import annotations

import os
import sys

import environ
import psycopg
import redis
from kombu import Connection


def main() -> int:
    failures = []
    db = environ.Env.db_url_config(os.environ["DATABASE_URL"])
    try:
        psycopg.connect(
            host=db["HOST"] or "127.0.0.1",
            port=db["PORT"] or 5432,
            user=db["USER"],
            dbname="postgres",
            connect_timeout=5,
        ).close()
    except Exception as exc:
        failures.append(f"PostgreSQL at {db['HOST']}:{db['PORT']} does not answer: {exc}")
    try:
        with Connection(os.environ["CELERY_BROKER_URL"], connect_timeout=5) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:
        failures.append(f"RabbitMQ does not answer: {exc}")
    redis_url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
    try:
        redis.Redis.from_url(redis_url, socket_connect_timeout=5).ping()
    except Exception as exc:
        failures.append(f"Redis at {redis_url} does not answer: {exc}")
    for failure in failures:
        print(f"REQUIRED SERVICE MISSING: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
