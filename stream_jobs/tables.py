"""faust tables as `PartitionedState`, written once per batch.

faust writes a table's changelog one message per `table[key] = value`, each through its
own send machinery (about 100 µs a write on the 2-core machines we run on; see
../shared/FAUST-NOTES.md). The stages instead collect a batch's writes and this adapter
puts them in the same places faust would: the table's changelog topic (same partition
as the source message, so faust's recovery and standby replicas work unchanged), then the
table's store, with the changelog offset recorded as the store's persisted offset so a
restart with RocksDB recovers only what is newer than the store.
"""
from __future__ import annotations

from faust.types import TP

from stream_jobs.state import BatchOverlay


class FaustTableState(BatchOverlay):
    def __init__(self, table):
        self.table = table
        super().__init__(self._read, self._read_many)

    @property
    def changelog_topic(self) -> str:
        return self.table.changelog_topic.get_topic_name()

    @property
    def _store(self):
        return self.table.data

    def _is_rocksdb(self) -> bool:
        return hasattr(self._store, "_db_for_partition")

    def _read(self, partition: int, key: bytes) -> bytes | None:
        store = self._store
        if self._is_rocksdb():
            return store._db_for_partition(partition).get(key)
        return store.data.get(key)

    def _read_many(self, partition: int, keys: list[bytes]) -> list[bytes | None]:
        store = self._store
        if self._is_rocksdb():
            return store._db_for_partition(partition).get(keys)  # rocksdict: a list is a multi-get
        data = store.data
        return [data.get(k) for k in keys]

    def apply(self, writes: dict[int, dict[bytes, bytes | None]], offsets: dict[int, int]) -> None:
        """Write delivered changelog records into the store; offsets: partition -> last changelog offset."""
        store = self._store
        if self._is_rocksdb():
            from rocksdict import WriteBatch

            for partition, items in writes.items():
                batch = WriteBatch(raw_mode=True)
                for key, value in items.items():
                    if value is None:
                        batch.delete(key)
                    else:
                        batch.put(key, value)
                store._db_for_partition(partition).write(batch)
                if partition in offsets:
                    store.set_persisted_offset(TP(self.changelog_topic, partition), offsets[partition])
            return
        data, key_partition = store.data, store._key_partition
        for partition, items in writes.items():
            for key, value in items.items():
                if value is None:
                    data.pop(key, None)
                    key_partition.pop(key, None)
                else:
                    data[key] = value
                    key_partition[key] = partition
