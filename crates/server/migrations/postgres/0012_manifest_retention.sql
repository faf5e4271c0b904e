-- Manifest retention (`[manifests]`): every accepted check-in stores its manifest, so without
-- pruning the table grows by one document per vehicle per cycle, forever. A manifest is
-- `quiet` when its check-in changed nothing (no completed assignment, no security event, no
-- progress, no update failure): quiet ones are pruned by age, the others (what an audit of an
-- update or an incident looks for) are kept unless `max_age_days` says otherwise; each
-- vehicle's newest manifest is always kept. Rows stored before this migration are not
-- classified and count as kept. Keep in step with the other backend's folder.
ALTER TABLE manifests ADD COLUMN IF NOT EXISTS quiet BOOLEAN NOT NULL DEFAULT FALSE;
-- What the pruning reads, oldest first; each index holds only its own kind of row. Building
-- them blocks writes to manifests while it runs: on a large table, build them beforehand
-- with CREATE INDEX CONCURRENTLY under these names (docs/deployment.md, "Upgrading").
-- Adding the column with a constant default rewrites nothing.
CREATE INDEX IF NOT EXISTS manifests_quiet_by_age ON manifests (received_at) WHERE quiet;
CREATE INDEX IF NOT EXISTS manifests_kept_by_age ON manifests (received_at) WHERE NOT quiet;
