-- 0009_retention_partial: retention planning (store.AppendRetentionRows) reads a
-- million rows, nearly all of them plain good rows (state good, no reason, no
-- failure) of which it needs the id and the slot. With images_retention (0007) it
-- evaluated, for every row, whether the row was plain: four columns compared per
-- row, a third of the query's time. Two partial indexes split the rows instead, so
-- that the question is answered once, when a row is written:
--   images_retention_good holds the plain good rows, by owner (a row of another
--   installation is told apart by the key, not by a comparison per row);
--   images_retention_other holds every other row that is not deleted, with every
--   column retention reads (covering: no table seek for a failed row).
-- A full report (store.AppendLineage) reads the rows in the UNIQUE (policy,
-- server_id, slot) order and reverses each server's in Go: no index of its own.
DROP INDEX images_retention;
CREATE INDEX images_retention_good ON images (policy, server_id, owner, slot DESC)
    WHERE state = 'good' AND reason = '' AND failure = '';
CREATE INDEX images_retention_other ON images (policy, server_id, slot DESC, state, requested_at, failed_at,
    next_attempt_at, late_until, failure, image_id, owner, reason, delete_reason)
    WHERE state <> 'deleted' AND (state <> 'good' OR reason <> '' OR failure <> '');
