-- Every accepted check-in stores its manifest (3–4 KB, over PostgreSQL's 2 KB threshold, so
-- compressed): with pglz that was a tenth of PostgreSQL's CPU in a check-in. lz4 compresses
-- several times faster; a server built without lz4 keeps pglz. Values stored before stay as
-- they are (each is read whatever its compression). Keep in step with the other backend's
-- folder (SQLite does not compress).
DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_settings
             WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)) THEN
    ALTER TABLE manifests ALTER COLUMN document SET COMPRESSION lz4;
    ALTER TABLE director_roles ALTER COLUMN document SET COMPRESSION lz4;
  END IF;
END
$$;
