-- `trail` reads event_subjects alone: one index range per month for the identifier, no join
-- to `events` (whose ORDER BY starts with region, so looking events up by event_id scans the
-- whole table: seconds at ten million events). The two columns it showed from `events`
-- move here. Rows stored before this migration show them empty.
ALTER TABLE event_subjects ADD COLUMN title String DEFAULT '', ADD COLUMN address String DEFAULT '';
