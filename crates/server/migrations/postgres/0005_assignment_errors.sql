-- Why an assignment has not completed: the rule and message of the last failure the vehicle
-- reported for it (`update_failures` of its manifest). Keep in step with the other backend's
-- folder.
ALTER TABLE assignments ADD COLUMN last_error TEXT;
