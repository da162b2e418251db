-- Every guarded batch statement of the state machine, by name; loaded once by
-- payments/state_machine.py (QUERIES), which runs each one and checks, before it runs, that the
-- moves it makes are in payments.statuses.TRANSITIONS.
--
-- Each statement guards every row on its own: a row moves only if its status (and, for outcomes,
-- its attempt number, the fencing token) is the expected one, under its row lock, and the same
-- statement writes its event (the "events" CTE) for exactly the rows it moved, at the database's
-- clock. The clock is statement_timestamp(): the database's, never a worker's, and one instant for
-- the whole statement (now() would be the start of an enclosing transaction, much older maybe).
--
-- Where a statement finds payments by id (the ids it is given, or those its claim CTE just locked),
-- it compares status with a column of an "expected" CTE (MATERIALIZED, so opaque to the planner),
-- never with a constant. From a constant status the planner can prove the predicates of the
-- partial indexes on status (payment_owner_pending_idx, payment_lease_rescue_idx, ...) and, with
-- stale statistics (a large table whose autoanalyze has not yet seen thousands of payments move),
-- it scans one of them whole, filtering on the id, instead of probing the primary key once per id:
-- ~30 ms to seconds instead of ~1 ms per batch, growing with the payments in flight
-- (docs/performance.md). The guards are the same tests on the same values; only the plan changes.
-- The claim CTEs, which search by status, keep their constants: there the partial index is the
-- plan wanted. The statements name the tables literally (a test checks them against the models).
--
-- Each statement starts after a "-- name: <name>" line and ends with a semicolon. Parameters are
-- psycopg's named placeholders, so a literal percent sign would need doubling (there is none).

-- name: claim_due
-- The sweep's hot query: the partial index payment_due_sweep_idx gives the due edge in due order;
-- rows another sweep holds are skipped, never waited for.
WITH expected AS MATERIALIZED (SELECT 'scheduled'::text AS scheduled),
due AS MATERIALIZED (
    SELECT id FROM payments_payment
    WHERE status = 'scheduled' AND scheduled_for <= statement_timestamp() + %(lookahead)s
    ORDER BY scheduled_for
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), moved AS (
    UPDATE payments_payment AS p
    SET status = 'dispatched', updated_at = statement_timestamp(),
        lease_expires_at = GREATEST(p.scheduled_for, statement_timestamp()) + %(lease)s
    FROM due CROSS JOIN expected WHERE p.id = due.id AND p.status = expected.scheduled
    RETURNING p.id, p.scheduled_for, p.attempts
), events AS (
    INSERT INTO payments_paymentevent (payment_id, at, from_status, to_status, reason, actor, attempt, data)
    SELECT id, statement_timestamp(), 'scheduled', 'dispatched', 'due', %(actor)s, attempts, '{}'::jsonb
    FROM moved
)
SELECT id, scheduled_for FROM moved ORDER BY scheduled_for;

-- name: redispatch_expired
WITH expected AS MATERIALIZED (SELECT 'dispatched'::text AS dispatched),
expired AS MATERIALIZED (
    SELECT id FROM payments_payment
    WHERE status = 'dispatched' AND lease_expires_at <= statement_timestamp()
    ORDER BY lease_expires_at LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), moved AS (
    UPDATE payments_payment AS p
    SET updated_at = statement_timestamp(),
        lease_expires_at = GREATEST(p.scheduled_for, statement_timestamp()) + %(lease)s
    FROM expired CROSS JOIN expected WHERE p.id = expired.id AND p.status = expected.dispatched
    RETURNING p.id, p.scheduled_for, p.attempts
), events AS (
    INSERT INTO payments_paymentevent (payment_id, at, from_status, to_status, reason, actor, attempt, data)
    SELECT id, statement_timestamp(), 'dispatched', 'dispatched', 'lease_expired', %(actor)s, attempts,
           '{}'::jsonb
    FROM moved
)
SELECT id, scheduled_for FROM moved ORDER BY scheduled_for;

-- name: expire_submissions
WITH expected AS MATERIALIZED (SELECT 'submitting'::text AS submitting),
expired AS MATERIALIZED (
    SELECT id FROM payments_payment
    WHERE status = 'submitting' AND lease_expires_at <= statement_timestamp()
    ORDER BY lease_expires_at LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), moved AS (
    UPDATE payments_payment AS p
    SET status = 'reconciling', updated_at = statement_timestamp(), lease_expires_at = NULL,
        next_attempt_at = statement_timestamp()
    FROM expired CROSS JOIN expected WHERE p.id = expired.id AND p.status = expected.submitting
    RETURNING p.id, p.attempts
), events AS (
    INSERT INTO payments_paymentevent (payment_id, at, from_status, to_status, reason, actor, attempt, data)
    SELECT id, statement_timestamp(), 'submitting', 'reconciling', 'lease_expired', %(actor)s, attempts,
           '{}'::jsonb
    FROM moved
)
SELECT id FROM moved;

-- name: claim_waiting
WITH expected AS MATERIALIZED (SELECT %(status)s::text AS status),
waiting AS MATERIALIZED (
    SELECT id FROM payments_payment
    WHERE status = %(status)s AND next_attempt_at <= statement_timestamp()
      AND (lease_expires_at IS NULL OR lease_expires_at <= statement_timestamp())
    ORDER BY next_attempt_at LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE payments_payment AS p
SET lease_expires_at = statement_timestamp() + %(lease)s, updated_at = statement_timestamp()
FROM waiting CROSS JOIN expected WHERE p.id = waiting.id AND p.status = expected.status
RETURNING p.id, p.next_attempt_at;

-- name: release_dispatch_leases
WITH expected AS MATERIALIZED (
    SELECT 'dispatched'::text AS dispatched, 'retry_scheduled'::text AS retry_scheduled,
           'reconciling'::text AS reconciling
)
UPDATE payments_payment AS p SET lease_expires_at = statement_timestamp()
FROM expected
WHERE p.id = ANY(%(ids)s) AND p.status IN (expected.dispatched, expected.retry_scheduled, expected.reconciling);

-- name: begin_submissions
WITH expected AS MATERIALIZED (
    SELECT 'dispatched'::text AS dispatched, 'retry_scheduled'::text AS retry_scheduled
), ready AS MATERIALIZED (
    SELECT p.id, p.status FROM payments_payment AS p CROSS JOIN expected
    WHERE p.id = ANY(%(ids)s)
      AND ((p.status = expected.dispatched AND p.scheduled_for <= statement_timestamp())
           OR (p.status = expected.retry_scheduled AND p.next_attempt_at <= statement_timestamp()))
    ORDER BY p.id
    FOR UPDATE OF p
), moved AS (
    UPDATE payments_payment AS p
    SET status = 'submitting', attempts = p.attempts + 1, updated_at = statement_timestamp(),
        lease_expires_at = statement_timestamp() + %(lease)s, next_attempt_at = NULL,
        reconcile_attempts = 0
    FROM ready WHERE p.id = ready.id AND p.status = ready.status
    RETURNING p.id, p.attempts, ready.status AS from_status
), events AS (
    INSERT INTO payments_paymentevent (payment_id, at, from_status, to_status, reason, actor, attempt, data)
    SELECT id, statement_timestamp(), from_status, 'submitting',
           CASE from_status WHEN 'dispatched' THEN 'due' ELSE 'retry' END,
           %(actor)s, attempts, '{}'::jsonb
    FROM moved
)
SELECT id, attempts FROM moved;

-- name: not_yet_due
-- Of the payments begin_submissions did not move, those waiting to be due: (id, seconds until due).
WITH expected AS MATERIALIZED (
    SELECT 'dispatched'::text AS dispatched, 'retry_scheduled'::text AS retry_scheduled
)
SELECT p.id, EXTRACT(EPOCH FROM (CASE p.status WHEN 'dispatched' THEN p.scheduled_for
                                               ELSE p.next_attempt_at END) - statement_timestamp())
FROM payments_payment AS p CROSS JOIN expected
WHERE p.id = ANY(%(ids)s)
  AND ((p.status = expected.dispatched AND p.scheduled_for > statement_timestamp())
       OR (p.status = expected.retry_scheduled AND p.next_attempt_at > statement_timestamp()));

-- name: record_outcomes
WITH v AS MATERIALIZED (
    SELECT * FROM unnest(
        %(ids)s::uuid[], %(attempts)s::int[], %(to)s::text[], %(reasons)s::text[],
        %(refs)s::text[], %(codes)s::text[], %(messages)s::text[], %(delays)s::float8[],
        %(data)s::text[], %(dead_reasons)s::text[]
    ) AS v(id, attempt, to_status, reason, ref, code, message, delay, data, dead_reason)
), expected AS MATERIALIZED (
    SELECT %(from)s::text AS status
), locked AS MATERIALIZED (
    SELECT p.id FROM payments_payment AS p JOIN v ON v.id = p.id CROSS JOIN expected
    WHERE p.status = expected.status AND p.attempts = v.attempt
    ORDER BY p.id
    FOR UPDATE OF p
), moved AS (
    UPDATE payments_payment AS p
    SET status = v.to_status, updated_at = statement_timestamp(), lease_expires_at = NULL,
        next_attempt_at = CASE WHEN v.delay IS NULL THEN NULL
                               ELSE statement_timestamp() + v.delay * interval '1 second' END,
        executed_at = CASE WHEN v.to_status = 'succeeded' THEN statement_timestamp() ELSE p.executed_at END,
        gateway_reference = CASE WHEN v.ref <> '' THEN v.ref ELSE p.gateway_reference END,
        failure_code = v.code, failure_message = v.message,
        dead_letter_reason = CASE WHEN v.to_status = 'dead_lettered' THEN v.dead_reason
                                  ELSE p.dead_letter_reason END
    FROM v JOIN locked ON locked.id = v.id CROSS JOIN expected
    WHERE p.id = v.id AND p.status = expected.status AND p.attempts = v.attempt
    RETURNING p.id, p.attempts, v.to_status, v.reason, v.data
), events AS (
    INSERT INTO payments_paymentevent (payment_id, at, from_status, to_status, reason, actor, attempt, data)
    SELECT id, statement_timestamp(), %(from)s, to_status, reason, %(actor)s, attempts, data::jsonb
    FROM moved
)
SELECT id FROM moved;

-- name: reschedule_waiting
WITH expected AS MATERIALIZED (SELECT %(status)s::text AS status)
UPDATE payments_payment AS p
SET lease_expires_at = NULL, updated_at = statement_timestamp(),
    next_attempt_at = CASE WHEN v.tried = 1
        THEN statement_timestamp() + v.delay * interval '1 second'
        -- a deferral never pulls the payment's own next try forward
        ELSE GREATEST(p.next_attempt_at, statement_timestamp() + v.delay * interval '1 second') END,
    reconcile_attempts = p.reconcile_attempts + v.tried
FROM unnest(%(ids)s::uuid[], %(attempts)s::int[], %(delays)s::float8[], %(tried)s::int[])
     AS v(id, attempt, delay, tried)
     CROSS JOIN expected
WHERE p.id = v.id AND p.attempts = v.attempt AND p.status = expected.status;

-- name: defer
WITH expected AS MATERIALIZED (
    SELECT 'dispatched'::text AS dispatched, 'retry_scheduled'::text AS retry_scheduled
), held AS MATERIALIZED (
    SELECT p.id FROM payments_payment AS p CROSS JOIN expected
    WHERE p.id = ANY(%(ids)s) AND p.status = expected.dispatched
    ORDER BY p.id
    FOR UPDATE OF p
), moved AS (
    UPDATE payments_payment AS p
    SET lease_expires_at = statement_timestamp() + %(delay)s, updated_at = statement_timestamp()
    FROM held CROSS JOIN expected WHERE p.id = held.id AND p.status = expected.dispatched
    RETURNING p.id, p.attempts
), events AS (
    INSERT INTO payments_paymentevent (payment_id, at, from_status, to_status, reason, actor, attempt, data)
    SELECT id, statement_timestamp(), 'dispatched', 'dispatched', %(reason)s, %(actor)s, attempts, '{}'::jsonb
    FROM moved
), waiting AS (
    UPDATE payments_payment AS p
    -- never earlier than the payment's own backoff (a gateway's Retry-After may be longer)
    SET lease_expires_at = NULL,
        next_attempt_at = GREATEST(p.next_attempt_at, statement_timestamp() + %(delay)s),
        updated_at = statement_timestamp()
    FROM expected
    WHERE p.id = ANY(%(ids)s) AND p.status = expected.retry_scheduled
    RETURNING p.id
)
SELECT id FROM moved UNION ALL SELECT id FROM waiting;
