-- Kept in step with the PostgreSQL folder, whose 0010 gives campaign_members pages room for
-- in-place updates (a fill factor); SQLite has no such setting.
SELECT 1;
