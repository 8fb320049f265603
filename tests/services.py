"""The real Redis the store and replica tests use, and how to tell it is there."""

from __future__ import annotations

import hashlib

import redis

REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
REDIS_PENDING_PREFIX = "bluebutton:pending:"


def redis_key(state: str) -> str:
    return REDIS_PENDING_PREFIX + hashlib.sha256(state.encode()).hexdigest()


def redis_unavailable(url: str = REDIS_URL) -> str | None:
    """None when Redis answers PING, else why not (a skip reason).

    A synchronous client on purpose: fixtures stay loop-agnostic whatever loop scope the tests use.
    """
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        client.ping()
    except (redis.RedisError, OSError) as e:
        return f"no Redis answers at {url} ({type(e).__name__}: {e})"
    finally:
        client.close()
    return None
