-- name: hits
-- description: hits by region pair and day over a period
-- param: from | datetime | 1970-01-01 00:00:00 | period start (UTC)
-- param: to | datetime | 2100-01-01 00:00:00 | period end (UTC, exclusive)
-- param: type | string | | only this hit type (WANTED_PERSON, WATCH_MATCH, CASE_LINK, BORDER_DUPLICATE); empty: all
-- reads: hits FINAL (ORDER BY owner_region, hit_region, detected_at)
SELECT toDate(detected_at) AS day, owner_region, hit_region, hit_type, count() AS hits
FROM hits FINAL
WHERE detected_at >= {from} AND detected_at < {to} AND ({type} = '' OR hit_type = {type}) AND {scope:hits}
GROUP BY day, owner_region, hit_region, hit_type
ORDER BY day, owner_region, hit_region, hit_type
