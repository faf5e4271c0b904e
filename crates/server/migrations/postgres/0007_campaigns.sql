-- Campaigns (staged rollouts): which vehicles the director signs instructions for, and when.
-- `spec` is the campaign as asked (JSON: release, target set, waves, criteria); `images`
-- the images it installs, resolved from the image repository at creation (JSON). `wave` is
-- the index of the latest started wave (-1: none yet). Keep in step with the other backend's
-- folder.
CREATE TABLE campaigns (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    spec TEXT NOT NULL,
    images TEXT NOT NULL,
    wave_sizes TEXT NOT NULL,
    state TEXT NOT NULL,
    wave BIGINT NOT NULL,
    wave_started_at TEXT,
    wave_met_at TEXT,
    reason TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

-- One row per ECU a campaign updates: its wave, the image, and the assignment made for it
-- once its wave started (its status and last error are the member's progress).
CREATE TABLE campaign_members (
    campaign_id BIGINT NOT NULL REFERENCES campaigns(id),
    vin TEXT NOT NULL,
    ecu_id TEXT NOT NULL,
    wave BIGINT NOT NULL,
    target TEXT NOT NULL,
    assignment_id BIGINT,
    instructed_at TEXT,
    PRIMARY KEY (campaign_id, vin, ecu_id)
);
CREATE INDEX campaign_members_by_vehicle ON campaign_members (vin, ecu_id);
CREATE INDEX campaign_members_by_wave ON campaign_members (campaign_id, wave);

-- What happened to a campaign, by whom (an operator's action, or the director's own: a wave
-- started, a halt and why): the operations log auditors read.
CREATE TABLE campaign_log (
    id BIGSERIAL PRIMARY KEY,
    campaign_id BIGINT NOT NULL REFERENCES campaigns(id),
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX campaign_log_by_campaign ON campaign_log (campaign_id, id);

-- How far a pending assignment got, as the vehicle reports it during a cycle
-- (`downloading`, `installing`): a halt does not take back an instruction being installed.
ALTER TABLE assignments ADD COLUMN stage TEXT;

-- When the vehicle may install an instruction (a maintenance window, signed into it).
ALTER TABLE assignments ADD COLUMN maintenance_window TEXT;

-- UNECE R156 records. `rxswin` of a campaign: the RXSWIN its vehicles have once every ECU it
-- updates confirmed the install (copied from its spec, for the queries below).
ALTER TABLE campaigns ADD COLUMN rxswin TEXT;

-- Every update an ECU confirmed or failed: from which image to which, under which campaign
-- and RXSWIN, with what result (`installed`, `failed`, `rolled-back`). Written with the
-- check-in that reports it; never changed.
CREATE TABLE update_records (
    id BIGSERIAL PRIMARY KEY,
    vin TEXT NOT NULL,
    ecu_id TEXT NOT NULL,
    from_target TEXT,
    to_target TEXT NOT NULL,
    rxswin TEXT,
    campaign TEXT,
    result TEXT NOT NULL,
    detail TEXT,
    at TEXT NOT NULL
);
CREATE INDEX update_records_by_vehicle ON update_records (vin, id);

-- A vehicle's RXSWIN over time: a row each time a campaign that changes it is confirmed
-- installed on every ECU it updates on that vehicle.
CREATE TABLE rxswin_history (
    id BIGSERIAL PRIMARY KEY,
    vin TEXT NOT NULL,
    rxswin TEXT NOT NULL,
    previous TEXT,
    campaign TEXT,
    at TEXT NOT NULL
);
CREATE INDEX rxswin_history_by_vehicle ON rxswin_history (vin, id);
