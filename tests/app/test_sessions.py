"""Session stores: the Redis store against a real server (database 15 unless HHVAEM_TEST_REDIS_URL says otherwise)
and the in-process store, with the same tests; then Redis outages and recovery.

Redis is `HHVAEM_TEST_REDIS_URL` (default `redis://127.0.0.1:6379/15`). If it cannot be reached the Redis cases
are skipped, unless `HHVAEM_REQUIRE_REDIS=1`, when they fail. Every test uses its own key prefix and deletes
only its own keys.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hhvaem.app.core.config import make_settings
from hhvaem.app.sessions.store import (
    MemorySessionStore,
    Observation,
    RedisSessionStore,
    SessionFull,
    SessionNotFound,
    SessionState,
    SessionStore,
    StoreUnavailable,
    make_store,
)
from tests.app.service import require_redis

REDIS_URL = os.environ.get("HHVAEM_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")

StoreFactory = Callable[..., SessionStore]


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def redis_url() -> str:
    return require_redis(REDIS_URL)


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    import redis

    prefix = f"hhvaem-test:{uuid.uuid4().hex}:session:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture(params=["memory", "redis"])
def make(request: pytest.FixtureRequest) -> StoreFactory:
    """A factory (call it inside the test's event loop) for a store of each kind."""
    if request.param == "memory":
        return lambda ttl_seconds=60.0, **kw: MemorySessionStore(ttl_seconds=ttl_seconds, **kw)
    url = request.getfixturevalue("redis_url")
    prefix = request.getfixturevalue("redis_prefix")
    return lambda ttl_seconds=60.0, **kw: RedisSessionStore(url, ttl_seconds=ttl_seconds, prefix=prefix, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------- semantics


def test_create_get_and_history(make: StoreFactory) -> None:
    async def main() -> None:
        store = make()
        try:
            created = await store.create("heart", 3, "alice", {"age": 61, "smoker": True, "chol": 5.25})
            assert created.model_name == "heart" and created.model_version == 3 and created.owner == "alice"
            assert created.created_at == created.updated_at and created.created_at.endswith("Z")
            assert [(o.feature, o.value, o.seq) for o in created.observations] == [
                ("age", 61, 0),
                ("smoker", True, 1),
                ("chol", 5.25, 2),
            ]
            assert created.current == {"age": 61, "smoker": True, "chol": 5.25}

            fetched = await store.get(created.id)
            assert fetched == created

            updated = await store.add_observations(created.id, {"cp": "typical", "age": 62})
            updated = await store.add_observations(created.id, {"smoker": None})  # retracted
            assert [o.seq for o in updated.observations] == [0, 1, 2, 3, 4, 5]
            assert [o.feature for o in updated.observations] == ["age", "smoker", "chol", "cp", "age", "smoker"]
            assert updated.current == {"age": 62, "chol": 5.25, "cp": "typical"}
            assert updated.observations[-1] == Observation("smoker", None, updated.updated_at, 5)
            times = [o.at for o in updated.observations]
            assert times == sorted(times) and updated.updated_at >= created.updated_at
            assert updated.created_at == created.created_at

            again = await store.get(created.id)
            assert again == updated
            assert SessionState.from_dict(again.to_dict()) == again

            # Values are kept exactly (Redis's Lua cjson would round these).
            exact = await store.add_observations(created.id, {"x": 0.12345678901234567, "big": 2**60, "s": 'a"b\\'})
            assert exact.current["x"] == 0.12345678901234567
            assert exact.current["big"] == 2**60
            assert exact.current["s"] == 'a"b\\'
            assert (await store.add_observations(created.id, {})).observations == exact.observations

            empty = await store.create("heart", 1, None, {})
            assert empty.observations == () and empty.current == {} and empty.owner is None
            first = await store.add_observations(empty.id, {"age": 40})
            assert [(o.feature, o.seq) for o in first.observations] == [("age", 0)]
            assert empty.id != created.id and len(empty.id) >= 20

            await store.delete(created.id)
            with pytest.raises(SessionNotFound):
                await store.get(created.id)
            with pytest.raises(SessionNotFound):
                await store.delete(created.id)
            with pytest.raises(SessionNotFound):
                await store.add_observations(created.id, {"age": 1})
            with pytest.raises(SessionNotFound):
                await store.get("no-such-session")
            await store.ping()
        finally:
            await store.close()

    run(main())


def test_ttl_expiry_and_refresh(make: StoreFactory) -> None:
    async def main() -> None:
        store = make(ttl_seconds=0.4)
        try:
            kept = await store.create("m", 1, None, {"a": 1})
            touched = await store.create("m", 1, None, {"a": 1})
            dropped = await store.create("m", 1, None, {"a": 1})
            await asyncio.sleep(0.25)
            await store.get(kept.id)  # a read renews the idle TTL
            await store.add_observations(touched.id, {"b": 2})  # so does an update
            await asyncio.sleep(0.25)  # 0.5 s since creation, 0.25 s since use
            await store.get(kept.id)
            await store.get(touched.id)
            with pytest.raises(SessionNotFound):
                await store.get(dropped.id)
            await asyncio.sleep(0.55)
            for sid in (kept.id, touched.id):
                with pytest.raises(SessionNotFound):
                    await store.get(sid)
                with pytest.raises(SessionNotFound):
                    await store.add_observations(sid, {"c": 3})
        finally:
            await store.close()

    run(main())


def test_concurrent_writers_lose_nothing(make: StoreFactory) -> None:
    n = 32

    async def main() -> None:
        store = make()
        try:
            sid = (await store.create("m", 1, None, {})).id
            results = await asyncio.gather(*(store.add_observations(sid, {f"f{i}": i}) for i in range(n)))
            assert all(len(r.observations) >= 1 for r in results)
            final = await store.get(sid)
            assert final.current == {f"f{i}": i for i in range(n)}
            assert sorted(o.seq for o in final.observations) == list(range(n))
            assert [o.seq for o in final.observations] == list(range(n))  # arrival order
            times = [o.at for o in final.observations]
            assert times == sorted(times)
        finally:
            await store.close()

    run(main())


def test_a_session_holds_at_most_its_cap_of_answers(make: StoreFactory) -> None:
    """Issue #22, 2: a history without a cap made every read of a long session cost the event loop (and every other
    caller) hundreds of ms. An update past the cap is refused whole and stores nothing; concurrent writers racing
    for the last places get exactly as many as fit."""

    async def main() -> None:
        store = make(max_observations=5)
        try:
            with pytest.raises(SessionFull, match="cap of 5"):
                await store.create("m", 1, None, {f"f{i}": i for i in range(6)})
            sid = (await store.create("m", 1, None, {"a": 1, "b": 2})).id
            await store.add_observations(sid, {"a": 3})  # a correction counts: 3 held
            with pytest.raises(SessionFull) as e:
                await store.add_observations(sid, {"c": 1, "d": 2, "e": 3})
            assert (e.value.held, e.value.adding, e.value.cap) == (3, 3, 5)
            unchanged = await store.get(sid)
            assert len(unchanged.observations) == 3 and unchanged.current == {"a": 3, "b": 2}
            results = await asyncio.gather(
                *(store.add_observations(sid, {f"x{i}": i}) for i in range(4)), return_exceptions=True
            )
            assert sum(isinstance(r, SessionFull) for r in results) == 2
            final = await store.get(sid)
            assert [o.seq for o in final.observations] == [0, 1, 2, 3, 4]
        finally:
            await store.close()

    run(main())


def test_a_session_keeps_the_ttl_it_was_created_with(redis_url: str, redis_prefix: str) -> None:
    """Issue #22, 9: a read through a replica configured with a shorter TTL cut the session's TTL to that one."""
    import redis

    async def main() -> None:
        long, short = (RedisSessionStore(redis_url, ttl_seconds=t, prefix=redis_prefix) for t in (600, 2))
        try:
            sid = (await long.create("m", 1, None, {"a": 1})).id
            read = await short.get(sid)
            updated = await short.add_observations(sid, {"b": 2})
            assert read.ttl_seconds == updated.ttl_seconds == 600
            pttl = redis.Redis.from_url(redis_url).pttl(redis_prefix + sid)
            assert 590_000 < pttl <= 600_000, pttl
            mine = (await short.create("m", 1, None, {})).id  # its own sessions keep its own TTL
            assert (await long.get(mine)).ttl_seconds == 2
        finally:
            await long.close()
            await short.close()

    run(main())


def test_concurrent_threads_each_with_own_loop_and_client(redis_url: str, redis_prefix: str) -> None:
    threads, per_thread = 4, 8

    async def setup() -> str:
        store = RedisSessionStore(redis_url, prefix=redis_prefix)
        try:
            return (await store.create("m", 1, None, {"start": 0})).id
        finally:
            await store.close()

    sid = run(setup())
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def worker(t: int) -> None:
        async def main() -> None:
            store = RedisSessionStore(redis_url, prefix=redis_prefix)
            try:
                await store.ping()
                barrier.wait()
                await asyncio.gather(
                    *(store.add_observations(sid, {f"t{t}_{i}": t * 100 + i}) for i in range(per_thread))
                )
            finally:
                await store.close()

        try:
            run(main())
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join(timeout=10)
    assert not errors, errors

    async def check() -> SessionState:
        store = RedisSessionStore(redis_url, prefix=redis_prefix)
        try:
            return await store.get(sid)
        finally:
            await store.close()

    final = run(check())
    expected = {"start": 0} | {f"t{t}_{i}": t * 100 + i for t in range(threads) for i in range(per_thread)}
    assert final.current == expected
    assert [o.seq for o in final.observations] == list(range(threads * per_thread + 1))


def test_redis_layout(redis_url: str, redis_prefix: str) -> None:
    """One key per session under the prefix, with the idle TTL set."""
    import redis

    async def main() -> str:
        store = RedisSessionStore(redis_url, prefix=redis_prefix, ttl_seconds=100)
        try:
            return (await store.create("m", 1, None, {"a": 1})).id
        finally:
            await store.close()

    sid = run(main())
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert list(client.scan_iter(match=redis_prefix + "*")) == [redis_prefix + sid]
        assert 90_000 < client.pttl(redis_prefix + sid) <= 100_000
    finally:
        client.close()


def test_make_store() -> None:
    memory = make_store(make_settings(session_ttl_seconds=5))
    assert isinstance(memory, MemorySessionStore) and memory.kind == "memory" and memory.ttl_seconds == 5
    redis_store = make_store(make_settings(redis_url="redis://:pw@127.0.0.1:1/0"))
    assert isinstance(redis_store, RedisSessionStore) and redis_store.kind == "redis"
    assert "pw" not in repr(redis_store) and redis_store.location == "127.0.0.1:1"
    run(redis_store.close())


# --------------------------------------------------------------------------------------------- outages


def test_unreachable_redis_fails_fast_and_clearly() -> None:
    port = free_port()  # nothing listens there

    async def main() -> None:
        store = RedisSessionStore(f"redis://:hunter2@127.0.0.1:{port}/0")
        try:
            for op in (
                store.ping(),
                store.get("x"),
                store.create("m", 1, None, {"a": 1}),
                store.add_observations("x", {"a": 1}),
                store.delete("x"),
            ):
                started = time.monotonic()
                with pytest.raises(StoreUnavailable) as info:
                    await op
                assert time.monotonic() - started < 3
                message = str(info.value)
                assert f"Redis at 127.0.0.1:{port} is unreachable" in message
                assert "hunter2" not in message
        finally:
            await store.close()

    run(main())


def test_hung_redis_times_out() -> None:
    """A server that accepts connections and never answers: StoreUnavailable after about one op timeout."""

    async def main() -> None:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(-1)
            writer.close()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        store = RedisSessionStore(f"redis://127.0.0.1:{port}/0", op_timeout=0.3, connect_timeout=0.3)
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match=rf"Redis at 127\.0\.0\.1:{port} did not answer"):
                await store.get("x")
            assert time.monotonic() - started < 1.5
        finally:
            await store.close()
            server.close()

    run(main())


@pytest.fixture
def throwaway_redis(tmp_path: Path) -> Iterator[tuple[int, Callable[[], None], Callable[[], None]]]:
    """(port, start, stop) for a private redis-server without persistence."""
    server = shutil.which("redis-server")
    cli = shutil.which("redis-cli")
    if not server or not cli:
        pytest.skip("redis-server / redis-cli not installed")
    port = free_port()

    def start() -> None:
        subprocess.run(
            [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            + ["--daemonize", "yes", "--dir", str(tmp_path), "--pidfile", str(tmp_path / "redis.pid")]
            + ["--logfile", str(tmp_path / "redis.log")],
            check=True,
            timeout=10,
        )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            probe = subprocess.run([cli, "-p", str(port), "ping"], capture_output=True, text=True, timeout=5)
            if probe.stdout.strip() == "PONG":
                return
            time.sleep(0.05)
        raise RuntimeError(f"throwaway redis-server on port {port} did not start")

    def stop() -> None:
        subprocess.run([cli, "-p", str(port), "shutdown", "nosave"], capture_output=True, timeout=10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) != 0:
                    return
            time.sleep(0.05)

    try:
        yield port, start, stop
    finally:
        stop()


def test_store_recovers_when_redis_returns(throwaway_redis) -> None:
    port, start, stop = throwaway_redis
    start()

    async def main() -> None:
        store = RedisSessionStore(f"redis://127.0.0.1:{port}/0", ttl_seconds=60)
        try:
            sid = (await store.create("m", 1, None, {"a": 1})).id
            await store.add_observations(sid, {"b": 2})
            await store.ping()

            await asyncio.to_thread(stop)
            for op in (store.ping(), store.get(sid), store.add_observations(sid, {"c": 3})):
                started = time.monotonic()
                with pytest.raises(StoreUnavailable, match=f"Redis at 127.0.0.1:{port} is unreachable"):
                    await op
                assert time.monotonic() - started < 3

            await asyncio.to_thread(start)  # empty: nothing was persisted
            await store.ping()  # the same object, no restart
            with pytest.raises(SessionNotFound):
                await store.get(sid)
            fresh = await store.create("m", 1, None, {"a": 1})
            after = await store.add_observations(fresh.id, {"b": 2})  # the Lua script is reloaded as needed
            assert after.current == {"a": 1, "b": 2}
        finally:
            await store.close()

    run(main())


def test_recovery_with_pooled_connections_after_restart(throwaway_redis) -> None:
    """Connections pooled before a restart are stale; the first command after it must still succeed."""
    port, start, stop = throwaway_redis
    start()

    async def main() -> None:
        store = RedisSessionStore(f"redis://127.0.0.1:{port}/0")
        try:
            await asyncio.gather(*(store.ping() for _ in range(4)))  # several pooled connections
            await asyncio.to_thread(stop)
            await asyncio.to_thread(start)
            await store.ping()
            sid = (await store.create("m", 1, None, {})).id
            await asyncio.gather(*(store.add_observations(sid, {f"f{i}": i}) for i in range(8)))
            assert len((await store.get(sid)).observations) == 8
        finally:
            await store.close()

    run(main())
