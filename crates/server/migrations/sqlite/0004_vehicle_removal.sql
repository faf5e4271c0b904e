-- Vehicles taken out of the fleet (`rampart admin remove`): kept, with their ECUs,
-- assignments and security events, for audit; the director refuses them from then on.
-- Keep in step with the other backend's folder.
ALTER TABLE vehicles ADD COLUMN removed_at TEXT;
ALTER TABLE vehicles ADD COLUMN removed_reason TEXT;
