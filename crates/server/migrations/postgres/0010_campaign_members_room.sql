-- Room on every page of campaign_members for the two later versions of each row (a wave
-- claims a member, then links its assignment): with full pages each update was a new tuple
-- on another page and an entry in each of the table's three indexes; with room, PostgreSQL
-- updates in place (HOT). A 100,000-vehicle wave spent most of its time there. Keep in step
-- with the other backend's folder (SQLite has no fill factor).
ALTER TABLE campaign_members SET (fillfactor = 33);
