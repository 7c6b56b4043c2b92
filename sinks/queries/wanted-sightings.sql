-- name: wanted-sightings
-- description: open wanted records seen outside their region, most recent first
-- param: limit | int | 100 | rows to show
-- reads: hits FINAL, events (latest revision of each wanted record)
SELECT detected_at AS seen_at, record_key AS wanted_record, owner_region, hit_region AS seen_in,
       matched_value AS identifier, trigger_event_id AS event_id
FROM hits FINAL
WHERE hit_type = 'WANTED_PERSON' AND {scope:hits}
  AND record_key NOT IN
  (
      SELECT concat(source_region, '/', source_system, '/', source_ref) FROM events
      WHERE kind = 'wanted'
      GROUP BY source_region, source_system, source_ref
      HAVING argMax(status, revision) = 'CLOSED'
  )
ORDER BY seen_at DESC
LIMIT {limit}
