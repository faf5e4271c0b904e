-- Rampart director and inventory schema (SQLite). Keep in step with ../postgres/.
CREATE TABLE vehicles (
    vin TEXT PRIMARY KEY NOT NULL,
    primary_ecu TEXT NOT NULL,
    created_at TEXT NOT NULL,
    last_manifest_counter BIGINT,
    last_seen TEXT
);

CREATE TABLE ecus (
    vin TEXT NOT NULL REFERENCES vehicles(vin),
    ecu_id TEXT NOT NULL,
    hardware_id TEXT NOT NULL,
    public_key TEXT NOT NULL,
    encryption_key TEXT,
    verification TEXT NOT NULL,
    installed_target TEXT,
    installed_length BIGINT,
    installed_hashes TEXT,
    installed_release_counter BIGINT,
    last_report_counter BIGINT,
    PRIMARY KEY (vin, ecu_id)
);

CREATE TABLE assignments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    vin TEXT NOT NULL REFERENCES vehicles(vin),
    ecu_id TEXT NOT NULL,
    target TEXT NOT NULL,
    length BIGINT NOT NULL,
    hashes TEXT NOT NULL,
    release_counter BIGINT NOT NULL,
    encrypt TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    completed_at TEXT
);
CREATE INDEX assignments_by_vehicle ON assignments (vin, status);

CREATE TABLE director_roles (
    vin TEXT NOT NULL,
    role TEXT NOT NULL,
    version BIGINT NOT NULL,
    expires_at TEXT NOT NULL,
    content_digest TEXT NOT NULL,
    document TEXT NOT NULL,
    PRIMARY KEY (vin, role)
);

CREATE TABLE manifests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    vin TEXT NOT NULL,
    counter BIGINT NOT NULL,
    nonce TEXT NOT NULL,
    received_at TEXT NOT NULL,
    document TEXT NOT NULL
);
CREATE INDEX manifests_by_vehicle ON manifests (vin, id);

CREATE TABLE security_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    source TEXT NOT NULL,
    rule TEXT NOT NULL,
    vin TEXT,
    ecu_id TEXT,
    remote TEXT,
    detail TEXT NOT NULL
);
CREATE INDEX security_events_by_vehicle ON security_events (vin, id);

CREATE TABLE image_keys (
    target TEXT PRIMARY KEY NOT NULL,
    content_key TEXT NOT NULL,
    ciphertext_path TEXT NOT NULL,
    ciphertext_length BIGINT NOT NULL,
    ciphertext_hashes TEXT NOT NULL
);
