-- name: trail
-- description: everything about one resident ID, plate or phone, across all regions, in time order
-- param: id | string | | the identifier: resident ID (15 or 18 digits), plate or mobile number (normalised for you)
-- param: since | datetime | 2000-01-01 00:00:00 | only events at or after this time (UTC)
-- purpose-required: yes
-- reads: event_subjects only (ORDER BY id_value, occurred_at: one index range per month); a row stored twice (sink re-delivery) shows once by LIMIT 1 BY event_id, cheaper than FINAL on ClickHouse 18.16
SELECT s.occurred_at AS occurred_at, s.kind AS kind, s.type AS type, s.region AS region,
       s.source_region AS source_region, s.id_kind AS matched_on, s.role AS role,
       s.title AS title, s.address AS address, s.event_id AS event_id
FROM event_subjects AS s
WHERE s.id_value IN ({ids}) AND s.occurred_at >= {since} AND {scope:s}
ORDER BY occurred_at, event_id
LIMIT 1 BY event_id
