-- name: trail
-- description: everything about one resident ID, plate or phone, across all regions, in time order
-- param: id | string | | the identifier: resident ID (15 or 18 digits), plate or mobile number (normalised for you)
-- param: since | datetime | 2000-01-01 00:00:00 | only events at or after this time (UTC)
-- purpose-required: yes
-- reads: event_subjects FINAL (ORDER BY id_value, occurred_at: one index range per month), events FINAL
SELECT s.occurred_at AS occurred_at, s.kind AS kind, s.type AS type, s.region AS region,
       s.source_region AS source_region, s.id_kind AS matched_on, s.role AS role,
       e.title AS title, e.address AS address, s.event_id AS event_id
FROM
(
    SELECT event_id, kind, type, region, source_region, id_kind, role, occurred_at, classification, share_scope
    FROM event_subjects FINAL
    WHERE id_value IN ({ids}) AND occurred_at >= {since}
) AS s
ANY LEFT JOIN
(
    SELECT event_id, title, address
    FROM events FINAL
    WHERE event_id IN (SELECT event_id FROM event_subjects WHERE id_value IN ({ids}))
) AS e USING (event_id)
WHERE {scope:s}
ORDER BY occurred_at, event_id
