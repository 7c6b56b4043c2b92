-- name: time-to-hit
-- description: delay from the triggering event's publication to the hit, percentiles per region pair (seconds)
-- param: from | datetime | 1970-01-01 00:00:00 | period start (UTC)
-- param: to | datetime | 2100-01-01 00:00:00 | period end (UTC, exclusive)
-- reads: hits FINAL
SELECT owner_region, hit_region, count() AS hits,
       round(quantile(0.5)((detected_ms - trigger_reported_ms) / 1000), 3) AS p50_s,
       round(quantile(0.99)((detected_ms - trigger_reported_ms) / 1000), 3) AS p99_s,
       round(max((detected_ms - trigger_reported_ms) / 1000), 3) AS max_s
FROM hits FINAL
WHERE detected_at >= {from} AND detected_at < {to} AND {scope:hits}
GROUP BY owner_region, hit_region
ORDER BY hits DESC, owner_region, hit_region
