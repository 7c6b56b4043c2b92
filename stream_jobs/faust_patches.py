"""One change to faust-streaming 0.15.3's consumer loop: no four tasks per message.

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

`install()` applies it only to the version it was written against (pinned in
pyproject.toml) and says so in the log; any other version runs faust as it is.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("intelbus.jobs")

PATCHED_VERSION = "0.15.3"
_installed = False


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
    import faust
    from faust.transport.consumer import Consumer

    if faust.__version__ != PATCHED_VERSION:
        log.warning("faust-streaming %s is not %s: its consumer loop runs unpatched (slower)",
                    faust.__version__, PATCHED_VERSION)
        return False
    if not _installed:
        Consumer._drain_messages = _drain_messages
        _installed = True
    return True
