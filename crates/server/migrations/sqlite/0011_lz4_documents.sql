-- Kept in step with the PostgreSQL folder, whose 0011 compresses stored manifests and
-- director documents with lz4; SQLite does not compress.
SELECT 1;
