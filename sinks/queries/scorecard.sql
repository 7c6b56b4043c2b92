-- name: scorecard
-- description: per agency: requests received, accepted/answered on time, median and p90 response (s), escalations, refusals by reason, hits confirmed on time, stale listings
-- param: from | datetime | 1970-01-01 00:00:00 | period start (UTC): items sent, opened or issued from then
-- param: to | datetime | 2100-01-01 00:00:00 | period end (UTC, exclusive)
-- param: by | string | region,branch | region (branches added up into one row per region); anything else, region,branch: one row per agency
-- purpose-required: yes
-- reads: workflow_events FINAL five times (requests, their parties, hits, escalations, item starts), each limited to the events the reader may see and to the items that started in the period (item_id IN ...: the primary key's index; `at` whole seconds, so at >= from is at_ms >= from ms and prunes partitions); then only the rows of agencies whose region the reader may see (an agency outside it would show only the items it shares with the reader); docs/workflows.md "Scorecard" defines each column, workflows/scorecard.py computes the same rows (tests/unit/sinks/test_scorecard_sql.py)
SELECT agency, region, branch,
       requests_received, accepted_on_time, if(requests_received = 0, NULL, accepted_on_time / requests_received) AS accepted_on_time_share,
       answered_on_time, if(requests_received = 0, NULL, answered_on_time / requests_received) AS answered_on_time_share,
       responded,
       if(responded = 0, NULL, arrayElement(times, toUInt64(intDiv(responded + 1, 2))) / 1000) AS response_median_s,
       if(responded = 0, NULL, arrayElement(times, toUInt64(intDiv(9 * responded + 9, 10))) / 1000) AS response_p90_s,
       escalations, refusals, refused_not_competent, refused_insufficient_information, refused_no_legal_basis,
       refused_duplicate, refused_no_capacity, refused_other,
       hits_owed, hits_confirmed_on_time, if(hits_owed = 0, NULL, hits_confirmed_on_time / hits_owed) AS hits_confirmed_on_time_share,
       stale_listings,
       {from} AS period_from, {to} AS period_to
FROM
(
    SELECT if({by} = 'region', party_region, party) AS agency,
           any(party_region) AS region,
           if({by} = 'region', '', any(party_branch)) AS branch,
           sum(received) AS requests_received,
           sum(accepted_ok) AS accepted_on_time,
           sum(answered_ok) AS answered_on_time,
           arraySort(groupArrayIf(response_ms, has_response = 1)) AS times,
           length(times) AS responded,
           sum(escalated) AS escalations,
           sum(refused) AS refusals,
           sum(refused = 1 AND refusal_code = 'NOT_COMPETENT') AS refused_not_competent,
           sum(refused = 1 AND refusal_code = 'INSUFFICIENT_INFORMATION') AS refused_insufficient_information,
           sum(refused = 1 AND refusal_code = 'NO_LEGAL_BASIS') AS refused_no_legal_basis,
           sum(refused = 1 AND refusal_code = 'DUPLICATE') AS refused_duplicate,
           sum(refused = 1 AND refusal_code = 'NO_CAPACITY') AS refused_no_capacity,
           sum(refused = 1 AND refusal_code = 'OTHER') AS refused_other,
           sum(owed) AS hits_owed,
           sum(hit_ok) AS hits_confirmed_on_time,
           sum(stale) AS stale_listings,
           [region] AS notify, 'PUBLIC' AS classification  -- for the scope below: a row per agency the reader may see
    FROM
    (
        SELECT party, splitByChar('/', party)[1] AS party_region, splitByChar('/', party)[2] AS party_branch,
               received, accepted_ok, answered_ok, has_response, response_ms, escalated, refused, refusal_code,
               owed, hit_ok, stale
        FROM
        (
            -- one row per addressee of a request sent in the period, judged by the addressee's own events
            SELECT party,
                   toUInt64(1) AS received,
                   toUInt64(n_accepted > 0 AND accept_due > 0 AND accepted_ms <= accept_due) AS accepted_ok,
                   toUInt64(n_answered > 0 AND answer_due > 0 AND answered_ms <= answer_due) AS answered_ok,
                   toUInt64(n_responses > 0) AS has_response,
                   toInt64(response_at) - toInt64(sent_ms) AS response_ms,
                   toUInt64(0) AS escalated,
                   toUInt64(n_refused > 0) AS refused,
                   toString(refusal_code) AS refusal_code,
                   toUInt64(0) AS owed, toUInt64(0) AS hit_ok, toUInt64(0) AS stale
            FROM
            (
                SELECT item_id, arrayJoin(arrayDistinct(to)) AS party, at_ms AS sent_ms, ifNull(due_ms, 0) AS accept_due
                FROM workflow_events FINAL
                WHERE item_kind = 'ASSISTANCE_REQUEST' AND event_type = 'SENT'
                  AND at >= {from} AND at < {to} AND {scope:w}
            ) AS sent
            ANY LEFT JOIN
            (
                SELECT item_id, party,
                       countIf(event_type IN ('ACCEPTED', 'REFUSED', 'ANSWERED')) AS n_responses,
                       argMinIf(at_ms, (seq, at_ms, event_id), event_type IN ('ACCEPTED', 'REFUSED', 'ANSWERED')) AS response_at,
                       countIf(event_type = 'ACCEPTED') AS n_accepted,
                       argMinIf(at_ms, (seq, at_ms, event_id), event_type = 'ACCEPTED') AS accepted_ms,
                       argMinIf(ifNull(due_ms, 0), (seq, at_ms, event_id), event_type = 'ACCEPTED') AS answer_due,
                       countIf(event_type = 'ANSWERED') AS n_answered,
                       argMinIf(at_ms, (seq, at_ms, event_id), event_type = 'ANSWERED') AS answered_ms,
                       countIf(event_type = 'REFUSED') AS n_refused,
                       argMinIf(code, (seq, at_ms, event_id), event_type = 'REFUSED') AS refusal_code
                FROM workflow_events FINAL
                WHERE item_kind = 'ASSISTANCE_REQUEST' AND party != '' AND {scope:w}
                  AND item_id IN (SELECT item_id FROM workflow_events WHERE event_type = 'SENT' AND at >= {from} AND at < {to})
                GROUP BY item_id, party
            ) AS answers USING (item_id, party)

            UNION ALL

            -- one row per hit follow-up opened in the period, for its owner region
            SELECT owner AS party,
                   toUInt64(0) AS received, toUInt64(0) AS accepted_ok, toUInt64(0) AS answered_ok,
                   toUInt64(0) AS has_response, toInt64(0) AS response_ms, toUInt64(0) AS escalated,
                   toUInt64(0) AS refused, toString('') AS refusal_code,
                   toUInt64(1) AS owed,
                   toUInt64(n_answers > 0 AND confirm_due > 0 AND answer_ms <= confirm_due) AS hit_ok,
                   toUInt64(n_stale) AS stale
            FROM
            (
                SELECT item_id,
                       argMinIf(to[1], (seq, at_ms, event_id), event_type = 'OPENED') AS owner,
                       argMinIf(at_ms, (seq, at_ms, event_id), event_type = 'OPENED') AS opened_ms,
                       countIf(event_type = 'OPENED') AS n_opened,
                       countIf(event_type IN ('CONFIRMED', 'NOT_VALID')) AS n_answers,
                       argMinIf(at_ms, (seq, at_ms, event_id), event_type IN ('CONFIRMED', 'NOT_VALID')) AS answer_ms,
                       argMaxIf(ifNull(due_ms, 0), (seq, at_ms, event_id),
                                ifNull(due_ms, 0) > 0 AND deadline != 'stale' AND event_type != 'STALE_LISTING') AS confirm_due,
                       countIf(event_type = 'STALE_LISTING') AS n_stale
                FROM workflow_events FINAL
                WHERE item_kind = 'HIT_FOLLOW_UP' AND {scope:w}
                  AND item_id IN (SELECT item_id FROM workflow_events WHERE event_type = 'OPENED' AND at >= {from} AND at < {to})
                GROUP BY item_id
            )
            WHERE n_opened > 0 AND owner != '' AND opened_ms >= toUInt64({from}) * 1000 AND opened_ms < toUInt64({to}) * 1000

            UNION ALL

            -- one row per escalation against a party, on an item that started in the period
            SELECT party,
                   toUInt64(0) AS received, toUInt64(0) AS accepted_ok, toUInt64(0) AS answered_ok,
                   toUInt64(0) AS has_response, toInt64(0) AS response_ms, toUInt64(1) AS escalated,
                   toUInt64(0) AS refused, toString('') AS refusal_code,
                   toUInt64(0) AS owed, toUInt64(0) AS hit_ok, toUInt64(0) AS stale
            FROM
            (
                SELECT item_id, party
                FROM workflow_events FINAL
                WHERE event_type = 'ESCALATED' AND party != '' AND {scope:w}
                  AND item_id IN (SELECT item_id FROM workflow_events WHERE event_type IN ('SENT', 'OPENED', 'ISSUED') AND at >= {from} AND at < {to})
            ) AS escalation
            ALL INNER JOIN
            (
                SELECT item_id
                FROM
                (
                    SELECT item_id, argMin(at_ms, (seq, at_ms, event_id)) AS start_ms
                    FROM workflow_events FINAL
                    WHERE event_type IN ('SENT', 'OPENED', 'ISSUED') AND {scope:w}
                      AND at >= {from} AND at < {to}
                    GROUP BY item_id
                )
                WHERE start_ms >= toUInt64({from}) * 1000 AND start_ms < toUInt64({to}) * 1000
            ) AS started USING (item_id)
        )
    )
    GROUP BY agency
)
WHERE {scope:w}
ORDER BY agency
