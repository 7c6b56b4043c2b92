"""Consumer lag as a metric: every consuming process exports its own group's lag per partition.

`intelbus_consumer_lag_messages{group, topic, partition}`: committed offset to end of log,
read every `interval` seconds by a daemon thread from the broker (the group's committed
offsets, not the consumer's own view, so a stalled consumer still shows its lag growing). Several workers of one group export
the same series; dashboards and rules take the max per partition.
"""
from __future__ import annotations

import logging
import threading

from prometheus_client import Gauge

LAG = Gauge("intelbus_consumer_lag_messages", "Messages not yet committed by the consumer group",
            ["group", "topic", "partition"])
log = logging.getLogger("intelbus.lag")


class LagExporter(threading.Thread):
    def __init__(self, settings, group: str, topics: list[str], *, user: str, interval: float = 10.0):
        super().__init__(name=f"lag-{group}", daemon=True)
        self.settings, self.group, self.topics, self.interval = settings, group, list(topics), interval
        self.user = user
        self._stopping = threading.Event()

    def sample(self, probe) -> dict[tuple[str, int], int]:
        lag = probe.lag()
        for (topic, partition), n in lag.items():
            LAG.labels(self.group, topic, str(partition)).set(max(0, n))
        return lag

    def run(self) -> None:
        from ops.lag import LagProbe

        probe = None
        while not self._stopping.is_set():
            try:
                probe = probe or LagProbe(self.settings, self.group, self.topics, user=self.user)
                self.sample(probe)
            except Exception as exc:  # the broker restarting: keep the last values, try again
                log.debug("lag probe of %s failed: %s", self.group, exc)
            self._stopping.wait(self.interval)
        if probe is not None:
            probe.close()

    def stop(self) -> None:
        self._stopping.set()
