-- name: duplicates
-- description: duplicate rate per source system (duplicates dropped / events received)
-- param: from | datetime | 1970-01-01 00:00:00 | period start (UTC)
-- reads: events FINAL (unique), duplicates FINAL (dropped by the dedupe stage)
SELECT source_system, sum(u) AS unique_events, sum(d) AS duplicates,
       round(sum(d) / (sum(u) + sum(d)), 4) AS duplicate_rate
FROM
(
    SELECT source_system, count() AS u, toUInt64(0) AS d
    FROM events FINAL
    WHERE occurred_at >= {from} AND {scope:e}
    GROUP BY source_system
    UNION ALL
    SELECT source_system, toUInt64(0) AS u, count() AS d
    FROM duplicates FINAL
    WHERE dropped_at >= {from} AND {scope:d}
    GROUP BY source_system
)
GROUP BY source_system
ORDER BY duplicate_rate DESC, source_system
