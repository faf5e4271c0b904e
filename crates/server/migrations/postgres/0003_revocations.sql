-- Revoked vehicle certificates (`rampart pki revoke`): every certificate of a VIN, or one
-- certificate by serial (lower-case hex). Checked before every vehicle route is served.
-- Keep in step with ../sqlite/.
CREATE TABLE revocations (
    id BIGSERIAL PRIMARY KEY,
    vin TEXT,
    serial TEXT,
    reason TEXT NOT NULL,
    revoked_at TEXT NOT NULL
);
CREATE INDEX revocations_by_vin ON revocations (vin);
CREATE INDEX revocations_by_serial ON revocations (serial);
