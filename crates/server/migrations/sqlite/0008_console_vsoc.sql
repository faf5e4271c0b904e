-- The console and the V-SOC (see crate::console and crate::vsoc). Keep in step with the
-- other backend's folder.

-- Console accounts: `password` is an argon2id PHC string, never the password; `role` is
-- viewer, operator or security.
CREATE TABLE users (
    name TEXT PRIMARY KEY NOT NULL,
    password TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at TEXT NOT NULL,
    disabled_at TEXT
);

-- Console sessions, by the SHA-256 of the cookie's token (a stolen database does not
-- give live sessions); `csrf` is the token every state change must carry.
CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY NOT NULL,
    user_name TEXT NOT NULL REFERENCES users(name),
    csrf TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);

-- Every state change made from the console, the admin API's user commands or the V-SOC's
-- own responses: who, what, on what, when.
CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail TEXT NOT NULL
);

-- Incidents the V-SOC engine opened: `kind` and `subject` say what it is about (a rule
-- across the fleet, a vehicle, an address, a signing role), one open incident per pair.
CREATE TABLE incidents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    severity TEXT NOT NULL,
    state TEXT NOT NULL,
    title TEXT NOT NULL,
    detail TEXT NOT NULL,
    runbook TEXT,
    image TEXT,
    opened_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    last_event_at TEXT NOT NULL,
    state_by TEXT,
    state_at TEXT
);
CREATE INDEX incidents_by_key ON incidents (kind, subject, id);
-- At most one open (or acknowledged) incident per kind and subject, whichever server opens it.
CREATE UNIQUE INDEX incidents_one_open ON incidents (kind, subject) WHERE state <> 'resolved';

-- The events behind an incident, as they were when it took them (security events are
-- counted and pruned; the incident keeps its evidence).
CREATE TABLE incident_events (
    incident_id BIGINT NOT NULL REFERENCES incidents(id),
    event_id BIGINT NOT NULL,
    at TEXT NOT NULL,
    rule TEXT NOT NULL,
    vin TEXT,
    ecu_id TEXT,
    remote TEXT,
    detail TEXT NOT NULL,
    count BIGINT NOT NULL,
    PRIMARY KEY (incident_id, event_id)
);

CREATE TABLE incident_vehicles (
    incident_id BIGINT NOT NULL REFERENCES incidents(id),
    vin TEXT NOT NULL,
    PRIMARY KEY (incident_id, vin)
);
CREATE INDEX incident_vehicles_by_vehicle ON incident_vehicles (vin);

-- A quarantined vehicle gets no instructions until it is released.
ALTER TABLE vehicles ADD COLUMN quarantined_at TEXT;
ALTER TABLE vehicles ADD COLUMN quarantine_reason TEXT;

-- What is to be sent to the SIEM webhook, kept until it was delivered (retried with backoff):
-- `kind` incident or events; for events, `cursor` is the highest security event ID sent.
CREATE TABLE webhook_outbox (
    kind TEXT NOT NULL,
    cursor BIGINT NOT NULL DEFAULT 0,
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    body TEXT NOT NULL,
    created_at TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_at TEXT NOT NULL,
    delivered_at TEXT,
    last_error TEXT
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (delivered_at, next_at);
