-- intelbus on a current ClickHouse (SQL-driven access control, 20.4 and later): one user per
-- service, each with only what it does. Run it once as an administrator that has access
-- management (the docker image: CLICKHOUSE_DEFAULT_ACCESS_MANAGEMENT=1), after `intelbus migrate`:
--
--     python -m ops.secrets grants | clickhouse-client --user admin --password ... --multiquery
--
-- `python -m ops.secrets grants` fills in @SHA256_<USER>@ with the sha256 of each password
-- (INTELBUS_CLICKHOUSE_PASSWORD_<USER>, or .stack/secrets/clickhouse/<user>), so no password
-- is ever written in a query. Add `HOST IP '10.1.2.0/24'` to each user for the hosts it runs on.
-- Debian's 18.16 (the local stack) has no SQL users: there ops/clickhouse/users.xml.in applies.
--
-- Who may do what:
--   the admin (`default` in intelbus's settings): migrations, everything else; the only one that
--       may ALTER, DELETE from or drop the audit log
--   intelbus_sink     INSERT into the history tables, and into audit_log the rows of records refused
--                     for their proof of publisher; SELECT schema_migrations (it checks at start that
--                     the schema is current)
--   intelbus_gateway  INSERT and SELECT on audit_log only (people's queries run as the reader)
--   intelbus_reader   SELECT on the history tables (not the audit log), readonly = 1 that no
--                     query may change
-- Nobody but the admin has ALTER, DELETE, TRUNCATE or DROP on intelbus.audit_log.

CREATE USER IF NOT EXISTS intelbus_sink IDENTIFIED WITH sha256_hash BY '@SHA256_INTELBUS_SINK@' DEFAULT DATABASE intelbus;
CREATE USER IF NOT EXISTS intelbus_gateway IDENTIFIED WITH sha256_hash BY '@SHA256_INTELBUS_GATEWAY@' DEFAULT DATABASE intelbus;
CREATE USER IF NOT EXISTS intelbus_reader IDENTIFIED WITH sha256_hash BY '@SHA256_INTELBUS_READER@' DEFAULT DATABASE intelbus SETTINGS readonly = 1 CONST;

GRANT INSERT ON intelbus.events TO intelbus_sink;
GRANT INSERT ON intelbus.event_subjects TO intelbus_sink;
GRANT INSERT ON intelbus.hits TO intelbus_sink;
GRANT INSERT ON intelbus.dead_letters TO intelbus_sink;
GRANT INSERT ON intelbus.duplicates TO intelbus_sink;
GRANT INSERT ON intelbus.workflow_events TO intelbus_sink;
GRANT SELECT ON intelbus.schema_migrations TO intelbus_sink;
-- the audit row of a record refused for its proof of publisher (dead letters of stage VERIFY)
GRANT INSERT ON intelbus.audit_log TO intelbus_sink;

GRANT INSERT, SELECT ON intelbus.audit_log TO intelbus_gateway;

GRANT SELECT ON intelbus.events TO intelbus_reader;
GRANT SELECT ON intelbus.event_subjects TO intelbus_reader;
GRANT SELECT ON intelbus.hits TO intelbus_reader;
GRANT SELECT ON intelbus.dead_letters TO intelbus_reader;
GRANT SELECT ON intelbus.duplicates TO intelbus_reader;
GRANT SELECT ON intelbus.workflow_events TO intelbus_reader;
