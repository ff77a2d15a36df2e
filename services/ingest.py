"""Judging incoming events and appending the accepted ones to the log, durably and once.

Shared by both ways in (HTTP and the NATS inbox). For each event: validate it; if its
(workspace, source, id) is already known, answer ``duplicate`` with the first copy's
sequence; otherwise publish it to the log and answer only once JetStream has acked it
(fsync before ack). JetStream's ``Nats-Msg-Id`` catches concurrent retries within its
window; the ``event_index`` table in PostgreSQL catches them for ever.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import dataclass, field

import asyncpg
import msgspec
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NatsClient

from events.catalog import Envelope
from events.log import LOG_STREAM, EventKey, arrival_headers, event_digest, index_key_of, log_headers, log_subject
from events.upcasting import decode_exact
from events.validation import MAX_EVENT_BYTES, InvalidEvent, check_subject, encode_event, parse_event, read_leniently
from services.atomic_publish import BATCH_ID_HEADER, MAX_ATOMIC_BATCH, AtomicBatchError, publish_atomic
from services.store.db import UNAVAILABLE as DATABASE_UNAVAILABLE

log = structlog.get_logger()

# JetStream error codes after which publishing one by one is the way forward.
DUPLICATE_IN_BATCH = 10201
TOO_MANY_BATCHES = 10210
# Times a batch refused for a duplicate id is looked up again before publishing one by one.
DUPLICATE_RETRIES = 4


class Result(msgspec.Struct, omit_defaults=True):
    source: str | None
    id: str | None
    status: str
    seq: int | None = None
    error: str | None = None


class IngestUnavailable(RuntimeError):
    """Ingest cannot go on for now: the log, the dedupe index or the rejected list could not be
    written. Raised before anything is stored (the HTTP API answers 503: retry the whole request),
    or, inside a caller's transaction (the NATS inbox), for the caller to roll back and read the
    batch again (what reached the log then comes back as duplicates)."""


class OutcomeUnknown(IngestUnavailable):
    """The log took a batch's commit but never confirmed it, for longer than the ingestor waits:
    the events may or may not be stored. Retrying the whole request is safe (a stored event is
    answered ``duplicate`` with its seq); the HTTP API answers 504."""


def kept_start(raw: bytes) -> bytes:
    """What the rejected list keeps of a body: its first 64 KiB, cut before a character that the
    cut would split (cut inside one, a body of UTF-8 text came back as bytes that are not: the
    list showed it as body_base64 and a U+FFFD at its end; the re-check audit)."""
    if len(raw) <= MAX_EVENT_BYTES:
        return raw
    kept = raw[:MAX_EVENT_BYTES]
    try:
        kept.decode()
    except UnicodeDecodeError as err:
        if err.reason == "unexpected end of data" and err.start >= len(kept) - 3:
            return kept[: err.start]
    return kept


@dataclass
class Judged:
    raw: bytes
    event: Envelope | None = None
    error: str | None = None


def judge(raw: bytes) -> Judged:
    try:
        return Judged(raw, event=parse_event(raw))
    except InvalidEvent as err:
        return Judged(raw, error=str(err))
    except Exception as err:  # a fault of the checks, not of the event: rejected and kept, never lost
        # Raised, it was a 500 over HTTP, and the NATS inbox read the same message again for ever,
        # every workspace's producers waiting behind it.
        log.error("ingest.check_failed", error=repr(err), exc_info=True)
        return Judged(raw, error=f"event: could not be checked ({type(err).__name__}); kept in the rejected list")


def _identity(raw: bytes) -> tuple[str | None, str | None]:
    """source and id of a rejected event, when they can be read at all."""
    try:
        probe = decode_exact(raw)
    except msgspec.DecodeError:
        try:  # grammatical JSON that msgspec refuses (a lone surrogate escape somewhere)
            probe = read_leniently(raw.decode())
        except (ValueError, RecursionError):
            return None, None
    except (UnicodeDecodeError, RecursionError):
        return None, None
    except Exception as err:  # only a label of the rejected entry: no fault here may keep the event out of the list
        log.error("ingest.identity_unread", error=repr(err), exc_info=True)
        return None, None
    if not isinstance(probe, dict):
        return None, None
    return _text(probe.get("source")), _text(probe.get("id"))


def _text(value: object) -> str | None:
    """A string an answer can carry: not one with a lone surrogate, which has no UTF-8."""
    if not isinstance(value, str):
        return None
    try:
        value.encode()
    except UnicodeEncodeError:
        return None
    return value


# event_index is keyed by a digest of (workspace, source, id) (migration 015, ``events.log.index_key``).
_LOOKUP = "SELECT key, seq FROM event_index WHERE key = ANY($1::bytea[])"

# Only the keys that were indexed already come back (a row the upsert updated has a non-zero
# xmax, a row it inserted has none): they are the rare ones whose seq may not be ours, and
# decoding a row each for the others cost asyncpg about 1 µs an event (docs/performance.md, item 32).
_INDEX = """
WITH written AS (
    INSERT INTO event_index AS known (key, seq)
    SELECT * FROM unnest($1::bytea[], $2::bigint[])
    ON CONFLICT (key) DO UPDATE SET seq = LEAST(known.seq, excluded.seq)
    RETURNING key, seq, xmax
)
SELECT key, seq FROM written WHERE xmax <> 0
"""

_REJECT = """
INSERT INTO rejected (workspace, via, reason, body)
SELECT w, $1, r, b FROM unnest($2::text[], $3::text[], $4::bytea[]) AS t(w, r, b)
"""



class Digests(dict[EventKey, bytes]):
    """Each key's ``event_digest``, hashed once: the log's ``Nats-Msg-Id`` is its hex, the index's
    key its first bytes."""

    def __missing__(self, key: EventKey) -> bytes:
        digest = self[key] = event_digest(*key)
        return digest

    def index_keys(self, keys: list[EventKey]) -> list[bytes]:
        return [index_key_of(self[key]) for key in keys]


@dataclass
class Appended:
    """A batch whose new events are in the log, its index write to come (``Ingestor.append_many``)."""

    judged: list[tuple[str, Judged]]
    results: list[Result | None]
    fresh: dict[EventKey, list[int]] = field(default_factory=dict)  # key -> positions in the batch
    known: dict[EventKey, int] = field(default_factory=dict)  # stored before: key -> first seq
    to_publish: list[EventKey] = field(default_factory=list)
    stored: list[tuple[int, bool]] = field(default_factory=list)  # (seq, duplicate) of to_publish
    digests: Digests = field(default_factory=Digests)

    def seqs(self) -> dict[EventKey, int]:
        """Every key of the batch with the seq of its first copy, as far as this batch knows."""
        return {**self.known, **{key: seq for key, (seq, _) in zip(self.to_publish, self.stored)}}


class Ingestor:
    def __init__(
        self, nc: NatsClient, pool: asyncpg.Pool, *, publish_timeout: float = 10.0, confirm_seconds: float = 60.0
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.pool = pool
        self.publish_timeout = publish_timeout
        # How long to keep asking the log about a commit it never answered (OutcomeUnknown after):
        # well inside JetStream's 2-minute dedupe window, which the asking relies on.
        self.confirm_seconds = confirm_seconds

    async def ingest(self, workspace: str, judged: list[Judged], via: str) -> list[Result]:
        return await self.ingest_many([(workspace, item) for item in judged], via)

    async def ingest_many(
        self, judged: list[tuple[str, Judged]], via: str, *, db: asyncpg.Connection | None = None
    ) -> list[Result]:
        """Judge events of any workspaces together: one index lookup, atomic batches of at most
        MAX_ATOMIC_BATCH spanning workspaces, one index write. With ``db`` (the inbox's transaction)
        the index and the rejections are read and written through it, so they commit with the
        caller's position: rejections are then kept exactly once."""
        return await self.index_appended(await self.append_many(judged, via, db=db), db=db)

    async def append_many(
        self, judged: list[tuple[str, Judged]], via: str, *, db: asyncpg.Connection | None = None,
        earlier: dict[EventKey, int] | None = None,
    ) -> Appended:
        """``ingest_many`` up to the log append: rejections recorded, the index looked up, the new
        events durably in the log; ``index_appended`` (or ``write_index``) finishes. ``earlier``:
        the keys (and seqs) of a batch appended just before whose index write may not be committed
        yet, so the lookup would miss them: their copies here are duplicates."""
        received_at = dt.datetime.now(dt.timezone.utc)
        out = Appended(judged, [None] * len(judged))
        rejected: list[tuple[str, bytes, str]] = []
        for position, (workspace, item) in enumerate(judged):
            if item.event is None:
                source, event_id = _identity(item.raw)
                out.results[position] = Result(source, event_id, "rejected", error=item.error)
                rejected.append((workspace, item.raw, item.error or ""))
            else:
                out.fresh.setdefault((workspace, item.event.source, item.event.id), []).append(position)

        if rejected:
            await self.record_rejected_many(rejected, via, db=db)

        if out.fresh:
            earlier = earlier or {}
            out.known = {key: earlier[key] for key in out.fresh if key in earlier}
            unseen = [key for key in out.fresh if key not in out.known]
            if unseen:
                out.known.update(await self._lookup(unseen, out.digests, db))
            out.to_publish = [key for key in unseen if key not in out.known]
            out.stored = await self._append(
                out.to_publish, [judged[out.fresh[key][0]][1] for key in out.to_publish], received_at,
                out.digests, db,
            )
        return out

    async def index_appended(self, appended: Appended, *, db: asyncpg.Connection | None = None) -> list[Result]:
        """Write the batch's index rows, and answer each event."""
        first_seq = await self.write_index(appended, db=db)
        results = appended.results
        for key, positions in appended.fresh.items():
            if key in appended.known:
                outcomes = [("duplicate", appended.known[key])] * len(positions)
            else:
                seq, was_duplicate = first_seq[key]
                outcomes = [("duplicate" if was_duplicate else "accepted", seq)]
                outcomes += [("duplicate", seq)] * (len(positions) - 1)
            for position, (status, seq) in zip(positions, outcomes):
                results[position] = Result(key[1], key[2], status, seq=seq)
        return results  # type: ignore[return-value]

    async def write_index(
        self, appended: Appended, *, db: asyncpg.Connection | None = None
    ) -> dict[EventKey, tuple[int, bool]]:
        """Write the batch's index rows, for a caller that answers no one (the NATS inbox)."""
        return await self._index(appended.to_publish, appended.stored, appended.digests, db)

    async def _lookup(self, keys: list[EventKey], digests: Digests, db: asyncpg.Connection | None = None) -> dict[EventKey, int]:
        index_keys = digests.index_keys(keys)
        try:
            rows = await (db or self.pool).fetch(_LOOKUP, index_keys)
        except DATABASE_UNAVAILABLE as err:
            raise IngestUnavailable(f"the dedupe index is unavailable: {err}") from err
        if not rows:  # the usual answer: none of them stored before
            return {}
        key_of = dict(zip(index_keys, keys))
        return {key_of[index_key]: seq for index_key, seq in rows}

    async def _append(
        self, keys: list[EventKey], events: list[Judged], received_at: dt.datetime, digests: Digests,
        db: asyncpg.Connection | None = None,
    ) -> list[tuple[int, bool]]:
        """Publish to the log; every (seq, duplicate) once durably acked.

        Atomic batches of at most MAX_ATOMIC_BATCH (an HTTP request is one: all stored or none,
        fsynced once), sent concurrently. The log keeps each event's JSON as it came, so unknown
        fields and exact decimals survive.
        """
        if not events:
            return []
        shared = arrival_headers(received_at)  # only Nats-Msg-Id differs between the batch's events
        messages = [
            (log_subject(workspace), item.raw, log_headers(digests[workspace, source, event_id], shared))
            for (workspace, source, event_id), item in zip(keys, events)
        ]
        step = MAX_ATOMIC_BATCH
        outcomes = await asyncio.gather(
            *(self._append_chunk(keys[i : i + step], messages[i : i + step], digests, db)
              for i in range(0, len(keys), step)),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return [ack for outcome in outcomes for ack in outcome]

    async def _append_chunk(self, keys: list[EventKey], messages, digests: Digests, db) -> list[tuple[int, bool]]:
        """One atomic batch. JetStream refuses a whole batch when one of its ids is in its dedupe
        window, without saying which: most likely a concurrent request stored it a moment ago, so
        look the keys up again (after a short wait for that request's index write) and publish the
        rest atomically again. After DUPLICATE_RETRIES such rounds, or when the outcome is unknown,
        publish one by one with the same ``Nats-Msg-Id``s, which answers each with its first copy's
        sequence (each message then fsynced alone: far slower)."""
        outcome: dict[EventKey, tuple[int, bool]] = {}
        pending = list(zip(keys, messages))
        maybe_committed, batch_id = False, None
        for attempt in range(DUPLICATE_RETRIES + 1):
            try:
                seqs = await publish_atomic(
                    self.nc, [message for _, message in pending], stream=LOG_STREAM, timeout=self.publish_timeout
                )
                outcome.update((key, (seq, False)) for (key, _), seq in zip(pending, seqs))
                return [outcome[key] for key in keys]
            except AtomicBatchError as err:
                if err.err_code not in (DUPLICATE_IN_BATCH, TOO_MANY_BATCHES) and not err.maybe_committed:
                    log.error("log.unavailable", error=str(err))
                    raise IngestUnavailable(f"the log could not be written: {err}") from err
                maybe_committed, batch_id = err.maybe_committed, err.batch_id
                if err.err_code != DUPLICATE_IN_BATCH or maybe_committed or attempt == DUPLICATE_RETRIES:
                    break
                await asyncio.sleep(0.01 * 2**attempt)
                found = await self._lookup([key for key, _ in pending], digests, db)
                outcome.update((key, (seq, True)) for key, seq in found.items())
                pending = [(key, message) for key, message in pending if key not in found]
                if not pending:
                    return [outcome[key] for key in keys]
        messages = [message for _, message in pending]
        if maybe_committed:
            acks = await self.settle_unknown(messages, batch_id)
        else:
            acks = await self._append_one_by_one(messages)
        outcome.update((key, ack) for (key, _), ack in zip(pending, acks))
        return [outcome[key] for key in keys]

    async def settle_unknown(self, messages, batch_id: str | None) -> list[tuple[int, bool]]:
        """(seq, duplicate) of each message of an atomic batch whose commit went unanswered. Asked
        again one by one with the same ``Nats-Msg-Id``s (``_confirm``), the log answers each with its
        stored copy, if any. A batch is stored whole or not at all, and with an id already in the
        window it is refused whole: so the copies are all this batch's own (accepted) when one of
        them carries its ``Nats-Batch-Id``, else another request's (duplicates; an outside audit saw
        two requests both answered "accepted" for one event when a concurrent retry stored it
        while this batch's commit was lost)."""
        acks = await self._confirm(messages)
        found = next((seq for seq, duplicate in acks if duplicate), None)
        ours = found is not None and batch_id is not None and await self._stored_by(found, batch_id)
        return [(seq, duplicate and not ours) for seq, duplicate in acks]

    async def _stored_by(self, seq: int, batch_id: str) -> bool:
        """Whether the log's message ``seq`` came in the atomic batch ``batch_id``."""
        try:
            stored = await self.js.get_msg(LOG_STREAM, seq)
        except (asyncio.TimeoutError, nats.errors.Error, nats.js.errors.Error) as err:
            raise OutcomeUnknown(f"the log stored these events, but could not say for which request: {err!r};"
                                 " retrying the same request is safe") from err
        return (stored.headers or {}).get(BATCH_ID_HEADER) == batch_id

    async def _confirm(self, messages) -> list[tuple[int, bool]]:
        """The fate of a batch whose commit went unanswered: publish its messages one by one with the
        same ``Nats-Msg-Id``s until the log answers (each is then stored, or the duplicate of its
        stored copy), for up to ``confirm_seconds``. Answering 503 meanwhile would be wrong: the
        log may hold the batch, and a 503 says nothing was stored."""
        give_up = time.monotonic() + self.confirm_seconds
        while True:
            try:
                if not self.nc.is_connected:  # asked on the next connection, not queued for it
                    raise IngestUnavailable("not connected to NATS")
                return await self._append_one_by_one(messages, min(self.publish_timeout, give_up - time.monotonic()))
            except IngestUnavailable as err:
                if time.monotonic() >= give_up:
                    raise OutcomeUnknown(
                        f"the log did not confirm the write within {self.confirm_seconds:g}s: the events may"
                        f" have been stored; retrying the same request is safe ({err})"
                    ) from err
                await asyncio.sleep(min(0.2, max(0.0, give_up - time.monotonic())))

    async def _append_one_by_one(self, messages, timeout: float | None = None) -> list[tuple[int, bool]]:
        timeout = self.publish_timeout if timeout is None else max(0.1, timeout)
        try:
            futures = [
                await self.js.publish_async(subject, payload, stream=LOG_STREAM, headers=headers, wait_stall=timeout)
                for subject, payload, headers in messages
            ]
            acks = await asyncio.wait_for(asyncio.gather(*futures), timeout)
        except (asyncio.TimeoutError, nats.errors.Error, nats.js.errors.Error) as err:
            log.error("log.unavailable", error=repr(err))
            raise IngestUnavailable(f"the log could not be written: {err!r}") from err
        return [(ack.seq, bool(ack.duplicate)) for ack in acks]

    async def _index(
        self, keys: list[EventKey], stored: list[tuple[int, bool]], digests: Digests, db: asyncpg.Connection | None = None
    ) -> dict[EventKey, tuple[int, bool]]:
        """Record the first copy's sequence for ever; a lower one already there wins. Through ``db``
        (a caller's transaction) a failure is raised, for the caller to roll back and redo."""
        outcome = {key: (seq, dup) for key, (seq, dup) in zip(keys, stored)}
        if not keys:
            return outcome
        index_keys = digests.index_keys(keys)
        try:
            rows = await (db or self.pool).fetch(_INDEX, index_keys, [seq for seq, _ in stored])
        except DATABASE_UNAVAILABLE as err:
            if db is not None:
                raise IngestUnavailable(f"the dedupe index could not be written: {err}") from err
            # The events are durably in the log; the projector indexes them as it applies them.
            log.warning("index.deferred", error=str(err))
            return outcome
        key_of = dict(zip(index_keys, keys)) if rows else {}
        for index_key, first_seq in rows:
            key = key_of[index_key]
            if first_seq < outcome[key][0]:
                outcome[key] = (first_seq, True)
        return outcome

    async def append_internal(self, workspace: str, event: Envelope) -> Result:
        """Append an event Touchline writes itself (a follow-up, an alert): it skips the check that
        refuses internal types from outside, and is deduplicated by (source, id) like any other."""
        check_subject(event)
        [result] = await self.ingest(workspace, [Judged(encode_event(event), event=event)], via="internal")
        return result

    async def record_rejected(
        self, workspace: str, items: list[tuple[bytes, str]], via: str, *, db: asyncpg.Connection | None = None
    ) -> None:
        await self.record_rejected_many([(workspace, raw, reason) for raw, reason in items], via, db=db)

    async def record_rejected_many(
        self, items: list[tuple[str, bytes, str]], via: str, *, db: asyncpg.Connection | None = None
    ) -> None:
        """Keep refused input (cut at 64 KiB) with its reason; if that fails, nothing is answered."""
        workspaces, reasons, bodies = zip(*((ws, reason, kept_start(raw)) for ws, raw, reason in items))
        try:
            await (db or self.pool).execute(_REJECT, via, workspaces, reasons, bodies)
        except DATABASE_UNAVAILABLE as err:
            raise IngestUnavailable(f"the rejected list could not be written: {err}") from err
