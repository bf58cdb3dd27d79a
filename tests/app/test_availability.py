"""The database layer through outages (issue #11), against real PostgreSQL behind a TCP proxy the test controls:
bounded waits when the server hangs, fast refusals while it is down (the breaker), recovery by itself."""

from __future__ import annotations

import time

import pytest

from benchmarks.proxy import TcpProxy
from hhvaem.app.db.availability import Breaker, DatabaseUnavailable
from hhvaem.app.db.database import Database, normalize_url
from tests.app.service import PG_DATABASE, PG_SERVER_URL, require_postgres


@pytest.fixture
def proxied():
    """(proxy, Database through it): timeout 2 s, the breaker retries after 1 s."""
    require_postgres()
    url = normalize_url(PG_SERVER_URL).set(database=PG_DATABASE)  # require_postgres creates it
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432)).start()
    db = Database(url.set(host="127.0.0.1", port=proxy.port), timeout=2, retry_seconds=1)
    try:
        yield proxy, db
    finally:
        db.dispose()
        proxy.stop()


def timed(fn) -> tuple[float, BaseException | None]:
    started = time.monotonic()
    try:
        fn()
    except BaseException as e:  # noqa: BLE001 - returned to the test
        return time.monotonic() - started, e
    return time.monotonic() - started, None


def test_refused_connections_are_a_fast_database_unavailable(proxied) -> None:
    proxy, db = proxied
    db.ping()
    proxy.mode = "refuse"
    seconds, error = timed(db.ping)
    assert isinstance(error, DatabaseUnavailable) and seconds < 2, (seconds, error)
    assert db.breaker.is_open
    seconds, error = timed(db.ping)  # within retry_seconds: refused without trying
    assert isinstance(error, DatabaseUnavailable) and seconds < 0.05 and "unreachable (for" in error.reason


def test_a_hung_server_costs_a_bounded_wait_then_fast_refusals(proxied) -> None:
    proxy, db = proxied
    db.ping()  # a pooled connection exists: the hang catches it mid-conversation
    proxy.mode = "hang"
    seconds, error = timed(db.ping)
    assert isinstance(error, DatabaseUnavailable), error
    assert 1.5 < seconds < 5.5, seconds  # pre-ping on the pooled connection, then a new connection: 2 s each
    seconds, error = timed(db.ping)
    assert isinstance(error, DatabaseUnavailable) and seconds < 0.05


def test_recovery_by_itself_once_the_server_answers(proxied) -> None:
    proxy, db = proxied
    proxy.mode = "refuse"
    assert isinstance(timed(db.ping)[1], DatabaseUnavailable)
    proxy.mode = "forward"
    assert isinstance(timed(db.ping)[1], DatabaseUnavailable)  # still within retry_seconds: not tried
    time.sleep(1.1)
    assert timed(db.ping)[1] is None and not db.breaker.is_open  # the trial went through and closed it
    with db.read() as tx:
        from sqlalchemy import text

        assert tx.execute(text("SELECT 41 + 1")).scalar() == 42


def test_probe_always_tries(proxied) -> None:
    # What the registry's refresh calls: it must find out that the database is back, breaker or not.
    proxy, db = proxied
    proxy.mode = "refuse"
    assert isinstance(timed(db.ping)[1], DatabaseUnavailable)
    proxy.mode = "forward"
    db.probe()
    assert not db.breaker.is_open


def test_a_caller_that_must_not_wait_is_never_the_trial(proxied) -> None:
    proxy, db = proxied
    proxy.mode = "hang"
    timed(db.ping)
    time.sleep(1.1)  # past retry_seconds: the next ordinary caller would be let through to try
    seconds, error = timed(lambda: db.transaction(trial=False).__enter__())
    assert isinstance(error, DatabaseUnavailable) and seconds < 0.05


def test_breaker_lets_one_trial_through_at_a_time() -> None:
    b = Breaker(retry_seconds=0.05)
    assert b.admit()  # closed
    b.failed("refused")
    assert not b.admit()
    time.sleep(0.06)
    assert b.admit() and not b.admit()  # one trial; the others are refused meanwhile
    b.failed("still refused")
    assert not b.admit()
    time.sleep(0.06)
    assert b.admit()
    b.succeeded()
    assert b.admit() and b.admit() and not b.is_open
