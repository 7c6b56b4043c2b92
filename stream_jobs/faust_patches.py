"""Two changes to faust-streaming 0.15.3's consumer: a commit guard (always on) and a
cheaper consumer loop (off by default).

## The commit guard: a message never processed is never committed over

faust commits, per partition, the end of the first run of consecutive acknowledged offsets
(`Consumer._new_offset`). Its check for a hole at the head of that run is off by one: it
gives up only when `min(acked) - committed > 1`, where `committed` is Kafka's committed
offset, the next message to process. So when exactly one message was skipped (committed
offset c, message c never acknowledged, c+1 and later acknowledged), faust commits past
it and the message is lost for good, silently. A hole of two or more holds the commit
instead, which `stream_jobs.watchdog` detects and repairs by reading the partition again.
Messages are skipped in faust's loop around a rebalance (faust-streaming 166, 175/640;
see docs/architecture.md); a single skipped message of the match-request or hit-candidate
topic is a hit lost. `guard_commits()` makes the one-message hole hold the commit too (a
gap that faust recorded, `Consumer._gap`, still counts as done), so the watchdog repairs
it like any other.

Gaps: when a fetched message's offset is more than one past the partition's read offset,
faust records the offsets in between as a gap, absent (`Consumer._add_gap`), i.e. done, and
commits over them. That is right for offsets that hold no message (a transaction's
commit marker: one offset) and wrong after a rebalance, when messages fetched before it
still arrive after faust set the read offset back to the committed one: measured here, a
join of a second worker recorded gaps of 20 to 40 offsets on ten partitions at once and
the run lost 105 events and 29 hits. `guard_commits()` therefore records a gap only when
it is a single offset; a longer one is left a hole (logged, `on_gap`), which holds the
commit until the watchdog reads the partition again. Before it does, the watchdog asks
Kafka whether the hole holds messages at all (`stream_jobs.app.probe_hole`); if it holds
none (markers of a transactional producer, say), it is recorded as the gap it is.

## The consumer loop: no four tasks per message

faust hands every fetched message to the conductor through
`await self.wait_first(callback(message), self.suspend_flow.wait())` (faust/transport/
consumer.py, `Consumer._drain_messages`). `wait_first` (mode) wraps the callback, the
flow event and the service's stopped and crashed events in four tasks, waits for the
first, then cancels three: about 40 µs a message on the 2-core machines we run on, the
largest single cost of a worker (../shared/FAUST-NOTES.md counts "about two
task-creating awaits per message"; py-spy put faust's machinery at 55% of the worker).

The race it guards against: the callback waits (a full stream buffer, flow control
suspended for a rebalance, the conductor's index lock) while the consumer is told to stop
the flow; the message must then be dropped rather than delivered late into a partition
that may have moved. When none of those waits can happen, the callback runs to its end
without giving up the event loop, and nothing can change in between: awaiting it
directly is the same as `wait_first` returning it as the winner. So:

- every condition under which the callback could wait is checked first
  (`_delivers_without_waiting`); if any holds, faust's own path runs, unchanged;
- otherwise the callback is awaited directly.

Both patches reach into faust's, mode's and aiokafka's internals, so they are written for
exact versions (pinned in pyproject.toml and constraints.txt): `require_pinned()` refuses to
start a worker on any other version, with a message naming the package, rather than run
faust unguarded.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("intelbus.jobs")

PATCHED_VERSION = "0.15.3"
# The framework versions the patches were written and tested against (pyproject.toml pins them).
PINNED = {"faust-streaming": PATCHED_VERSION, "mode-streaming": "0.7.1", "aiokafka": "0.14.0"}


class UnsupportedFramework(RuntimeError):
    """A stream framework package is not the version intelbus's patches were written for."""


def version_mismatches(installed) -> list[str]:
    """'package X is not Y' for every pinned package whose installed version differs.

    installed(name) -> version string or None (not installed)."""
    out = []
    for name, want in PINNED.items():
        have = installed(name)
        if have != want:
            out.append(f"{name} {have or '(not installed)'} is not {want}")
    return out


def _installed_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def require_pinned(installed=None) -> None:
    """Refuse to run the stream jobs on framework versions the patches were not written for."""
    wrong = version_mismatches(installed or _installed_version)
    if wrong:
        raise UnsupportedFramework(
            "intelbus's stream jobs refuse to start: " + "; ".join(wrong) + ". The commit guard and the "
            "consumer loop patch (stream_jobs/faust_patches.py) reach into these packages' internals and "
            "were written for exactly these versions. Reinstall the locked environment with `make install` "
            "(pip install -c constraints.txt -e .), or port and re-test the patches before changing the pins.")
_installed = False
_guarded = False


def hole_at_commit_point(consumer: Any, tp: Any) -> tuple[int, int] | None:
    """(committed, first acknowledged) when the message at the committed offset was never
    acknowledged while later ones were, and is not in a gap faust recorded; else None."""
    acked = consumer._acked.get(tp)
    committed = consumer._committed_offset.get(tp)
    if not acked or committed is None:
        return None
    first = min(acked)
    if first <= committed:
        return None
    gap = consumer._gap.get(tp)
    if gap is not None and gap.overlaps(committed):
        return None  # faust's own gap bookkeeping (offsets it knows are not there) fills it
    return committed, first


def _guard(new_offset, on_hole):
    def _new_offset(self, tp):
        hole = hole_at_commit_point(self, tp)
        if hole is not None:
            on_hole(tp, *hole)
            return None  # the commit stays where it is until the message is processed
        return new_offset(self, tp)

    _new_offset.__wrapped__ = new_offset
    return _new_offset


def _gap_policy(add_gap, on_gap):
    async def _add_gap(self, tp, offset_from: int, offset_to: int) -> None:
        # faust's interval is [offset_from, offset_to]: the offsets not seen, and the message
        # just fetched (offset_to), which is processed anyway.
        if offset_to - offset_from <= 1:
            return await add_gap(self, tp, offset_from, offset_to)
        on_gap(tp, offset_from, offset_to - 1)  # not recorded: a hole, until read or probed

    _add_gap.__wrapped__ = add_gap
    return _add_gap


def record_gap(consumer, tp, first: int, last: int) -> None:
    """Record offsets [first, last] as absent, for a hole found to hold no message. (faust's
    own `_add_gap` starts a gap one past the committed offset at the earliest, so it could
    not record a hole that begins at it.)"""
    gap = consumer._gap[tp]
    gap.addi(first, last + 1)
    gap.merge_overlaps()


def guard_commits(on_hole=None, on_gap=None) -> bool:
    """Install the commit guard (see the module doc) if faust is the version it was written for.

    on_hole(tp, committed, first_acknowledged) is called each time the guard holds a commit;
    on_gap(tp, first, last) for each gap of more than one offset that is left a hole.
    """
    global _guarded
    from faust.transport.consumer import Consumer

    require_pinned()
    if not _guarded:
        Consumer._new_offset = _guard(Consumer._new_offset, on_hole or (lambda *a: None))
        Consumer._add_gap = _gap_policy(Consumer._add_gap, on_gap or (lambda *a: None))
        _guarded = True
    return True


def _delivers_without_waiting(consumer: Any, tp: Any) -> bool:
    """True when the conductor's callback for `tp` cannot suspend (see the module doc)."""
    app = consumer.app
    if consumer.suspend_flow.is_set() or not app.flow_control.is_active():
        return False
    conductor = app.topics
    if conductor._tp_to_callback_lock.locked():
        return False
    buffer = app.producer.buffer
    if buffer.size > buffer.max_messages:
        return False
    channels = conductor._tp_index.get(tp)
    if channels:
        for channel in channels:
            if channel.queue.full():
                return False
    return True


async def _drain_messages(self, fetcher) -> None:  # pragma: no cover - exercised by the integration tests
    """faust 0.15.3's `Consumer._drain_messages`, with the direct path for a callback that cannot wait."""
    from faust.transport.consumer import CONSUMER_FETCHING

    callback = self.callback
    getmany = self.getmany
    consumer_should_stop = self._stopped.is_set
    fetcher_should_stop = fetcher._stopped.is_set
    get_read_offset = self._read_offset.__getitem__
    set_read_offset = self._read_offset.__setitem__
    set_flag, unset_flag = self.diag.set_flag, self.diag.unset_flag
    commit_every = self._commit_every
    acks_enabled_for = self.app.topics.acks_enabled_for
    direct = _delivers_without_waiting
    yield_every, num_since_yield = 100, 0
    sleep = asyncio.sleep
    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            set_flag(CONSUMER_FETCHING)
            ait = getmany(timeout=1.0)
            await self.sleep(0)
            if not self.should_stop:
                async for tp, message in ait:
                    num_since_yield += 1
                    if num_since_yield > yield_every:
                        await sleep(0)
                        num_since_yield = 0
                    offset = message.offset
                    r_offset = get_read_offset(tp)
                    if r_offset is None or offset >= r_offset:
                        gap = offset - (r_offset or 0)
                        if gap > 1 and r_offset and acks_enabled_for(message.topic):
                            await self._add_gap(tp, r_offset + 1, offset)
                        if commit_every is not None and self._n_acked >= commit_every:
                            self._n_acked = 0
                            await self.commit()
                        if direct(self, tp):
                            await callback(message)
                        else:
                            await self.wait_first(callback(message), self.suspend_flow.wait())
                        set_read_offset(tp, offset)
                unset_flag(CONSUMER_FETCHING)
    except self.consumer_stopped_errors:
        if self.transport.app.should_stop:
            self.log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if self.transport.app.should_stop:
            self.log.info("Consumer shutting down for user cancel.")
            return
        raise
    except Exception as exc:
        self.log.exception("Drain messages raised: %r", exc)
        raise
    finally:
        unset_flag(CONSUMER_FETCHING)


def install() -> bool:
    """Patch faust's consumer loop if faust is the version this was written for."""
    global _installed
    from faust.transport.consumer import Consumer

    require_pinned()
    if not _installed:
        Consumer._drain_messages = _drain_messages
        _installed = True
    return True
