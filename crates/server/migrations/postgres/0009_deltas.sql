-- Deltas published in the image repository (issue 18): what the director offers an ECU whose
-- reported image is a delta's source, in place of the full image. One row per delta target;
-- the offer is the JSON the director signs (without the per-ECU encryption).
CREATE TABLE deltas (
    path TEXT PRIMARY KEY NOT NULL,
    target TEXT NOT NULL,
    source_sha256 TEXT NOT NULL,
    offer TEXT NOT NULL
);
CREATE INDEX deltas_by_result ON deltas (target, source_sha256);
