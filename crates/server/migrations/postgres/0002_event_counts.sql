-- Security events are counted, not repeated (see db::Db::record_event): `count` occurrences
-- between `at` (the first) and `last_at` (the latest), from client address `source_ip` (the
-- key of per-address aggregation; `remote` keeps the full address). Keep in step with
-- ../sqlite/.
ALTER TABLE security_events ADD COLUMN count BIGINT NOT NULL DEFAULT 1;
ALTER TABLE security_events ADD COLUMN last_at TEXT;
ALTER TABLE security_events ADD COLUMN source_ip TEXT;
UPDATE security_events SET last_at = at;
CREATE INDEX security_events_by_source ON security_events (source_ip, rule, id);
CREATE INDEX security_events_by_time ON security_events (last_at);
