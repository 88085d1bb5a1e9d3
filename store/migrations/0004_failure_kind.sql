-- failure says what kind of failure a failed row is, where retention and the late
-- watch must tell them apart: 'timeout' (not good within wait_timeout; the image may
-- still become good, and is watched until late_until), 'hollow' (it was good, then a
-- volume snapshot behind it went missing or to error: it can no longer boot), or ''
-- (any other failure, or a row that is not failed).
ALTER TABLE images ADD COLUMN failure TEXT NOT NULL DEFAULT '';
ALTER TABLE images ADD COLUMN late_until TEXT;
-- Rows failed by timeout before this migration: their late window is already over,
-- but reconcile may still promote one whose image Glance shows complete.
UPDATE images SET failure = 'timeout'
 WHERE state = 'failed' AND image_id IS NOT NULL
   AND (reason LIKE 'not good within wait_timeout%' OR reason LIKE 'not confirmed good within wait_timeout%');
CREATE INDEX images_late ON images (late_until) WHERE late_until IS NOT NULL;
