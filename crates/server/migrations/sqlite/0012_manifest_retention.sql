-- Manifest retention (`[manifests]`): every accepted check-in stores its manifest, so without
-- pruning the table grows by one document per vehicle per cycle, forever. A manifest is
-- `quiet` when its check-in changed nothing (no completed assignment, no security event, no
-- progress, no update failure): quiet ones are pruned by age, the others (what an audit of an
-- update or an incident looks for) are kept unless `max_age_days` says otherwise; each
-- vehicle's newest manifest is always kept. Rows stored before this migration are not
-- classified and count as kept. Kept in step with the PostgreSQL folder.
ALTER TABLE manifests ADD COLUMN quiet BOOLEAN NOT NULL DEFAULT FALSE;
-- What the pruning reads, oldest first; each index holds only its own kind of row. (SQLite
-- has no ADD COLUMN IF NOT EXISTS; the PostgreSQL file takes a column added beforehand.)
CREATE INDEX IF NOT EXISTS manifests_quiet_by_age ON manifests (received_at) WHERE quiet;
CREATE INDEX IF NOT EXISTS manifests_kept_by_age ON manifests (received_at) WHERE NOT quiet;
