-- What a vehicle is, for choosing which vehicles an operation concerns (campaign target sets):
-- attributes (model, region, …: a JSON object of strings) and tags (a JSON array of
-- strings). Keep in step with the other backend's folder.
ALTER TABLE vehicles ADD COLUMN attributes TEXT;
ALTER TABLE vehicles ADD COLUMN tags TEXT;
