"""One driver per study: a lease row in the study's database.

``launch`` takes the lease of its study before it touches a trial and holds it while it runs:
a background thread renews ``expires_at`` every HEARTBEAT_S, and the row is deleted when the
driver ends. A second ``launch`` of the same study finds a live lease and stops with one line
naming the holder. A lease whose heartbeat stopped (``expires_at`` passed), or whose holder
is a process of this host that no longer exists (a driver killed with ``kill -9``), is taken
over: only then does the new driver reconcile the trials the old one left running, so
reconciliation never touches a live driver's trials.

Taking and taking over are single conditional statements (an INSERT that the primary key
refuses to a second driver; an UPDATE on the expired holder's identity), so two drivers
racing for a free or expired lease cannot both win, in SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import threading
import uuid
from dataclasses import dataclass

from sqlalchemy import Column, DateTime, Integer, String, Table, delete, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from hybridnas.errors import UserError
from hybridnas.studies.storage import ResultsStore, metadata

__all__ = ["HEARTBEAT_S", "LEASES", "TTL_S", "Lease", "StudyBusy", "take_lease"]

HEARTBEAT_S = 10.0
TTL_S = 60.0  # six missed heartbeats: a driver that stalls this long has lost its study

LEASES = Table(
    "hybridnas_leases",
    metadata,
    Column("study", String(200), primary_key=True),
    Column("owner", String(64), nullable=False),  # a random id per driver process
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("taken_at", DateTime, nullable=False),
    Column("expires_at", DateTime, nullable=False),
)


class StudyBusy(UserError):
    """The study's lease is held by a live driver; the message names it."""


@dataclass(frozen=True)
class Holder:
    owner: str
    host: str
    pid: int
    expires_at: dt.datetime


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


class Lease:
    """A held lease: :meth:`release` (or leaving the ``with`` block) gives it back. ``taken_over``
    names the holder it replaced, if any (so the caller knows a driver's trials were orphaned)."""

    def __init__(self, store: ResultsStore, study: str, owner: str, taken_over: Holder | None) -> None:
        self.store, self.study, self.owner, self.taken_over = store, study, owner, taken_over
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{study}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                with self.store.engine.begin() as conn:
                    conn.execute(update(LEASES).where(LEASES.c.study == self.study, LEASES.c.owner == self.owner)
                                 .values(expires_at=_now() + dt.timedelta(seconds=TTL_S)))
            except DBAPIError:  # the database is away for now (a restart, a network blip): the lease
                continue  # lives TTL_S, so the next beats renew it; a dead thread would lose it for good

    def release(self) -> None:
        self._stop.set()
        self._thread.join(timeout=HEARTBEAT_S)
        with self.store.engine.begin() as conn:
            conn.execute(delete(LEASES).where(LEASES.c.study == self.study, LEASES.c.owner == self.owner))

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


def holder(store: ResultsStore, study: str) -> Holder | None:
    """Who holds ``study``'s lease now, expired or not; None if nobody."""
    with store.engine.connect() as conn:
        row = conn.execute(select(LEASES).where(LEASES.c.study == study)).first()
    return None if row is None else Holder(row.owner, row.host, row.pid, row.expires_at)


def take_lease(store: ResultsStore, study: str) -> Lease:
    """The lease of ``study`` for this process; raises :class:`StudyBusy` if a live driver holds it."""
    owner, host, pid = uuid.uuid4().hex, socket.gethostname(), os.getpid()
    now = _now()
    mine = {"study": study, "owner": owner, "host": host, "pid": pid, "taken_at": now,
            "expires_at": now + dt.timedelta(seconds=TTL_S)}
    try:
        with store.engine.begin() as conn:
            conn.execute(insert(LEASES).values(**mine))
        return Lease(store, study, owner, None)
    except IntegrityError:
        pass  # held, perhaps expired
    old = holder(store, study)
    if old is None:  # released in between: try once more from the start
        return take_lease(store, study)
    dead_here = old.host == host and not _pid_alive(old.pid)
    if old.expires_at > now and not dead_here:
        left = (old.expires_at - now).total_seconds()
        raise StudyBusy(f"study {study} is being run by another driver (pid {old.pid} on {old.host}, lease "
                        f"renewed every {HEARTBEAT_S:g} s, expires in {left:.0f} s if it stops): wait for it "
                        f"to finish, or stop it first")
    with store.engine.begin() as conn:  # take over only from that holder: a racing driver cannot both win
        taken = conn.execute(update(LEASES).where(LEASES.c.study == study, LEASES.c.owner == old.owner)
                             .values(**mine)).rowcount
    if taken != 1:
        raise StudyBusy(f"study {study}: another driver took over its expired lease just now; it runs the study")
    return Lease(store, study, owner, old)
