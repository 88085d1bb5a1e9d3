-- Restore drills (a policy's verify: block). verified_at and verify_result record the
-- last drill of an image on its row: 'ok' (booted to ACTIVE, and the console marker
-- seen when one is set), 'failed' (ERROR, refused, or the marker never came) or
-- 'timeout'; verify_detail says why.
ALTER TABLE images ADD COLUMN verified_at TEXT;
ALTER TABLE images ADD COLUMN verify_result TEXT NOT NULL DEFAULT '';
ALTER TABLE images ADD COLUMN verify_detail TEXT NOT NULL DEFAULT '';
-- The drill journal: a row is written before the drill server is asked for, so that
-- a crash at any point leaves something to find. token is the value of the
-- imagekeeper_drill metadata key on the drill server; drill_server_id and
-- volume_ids (a JSON list) are filled in as they become known. state: 'booting'
-- (asked for, or about to be), 'cleaning' (the result is known; the server and its
-- volumes are being deleted), 'done' (nothing of it is left in the cloud).
CREATE TABLE drills (
  id              INTEGER PRIMARY KEY,
  policy          TEXT NOT NULL,
  server_id       TEXT NOT NULL,
  image_row       INTEGER NOT NULL, -- images.id (no foreign key: compaction archives old rows)
  image_id        TEXT NOT NULL,
  token           TEXT NOT NULL UNIQUE,
  drill_server_id TEXT NOT NULL DEFAULT '',
  volume_ids      TEXT NOT NULL DEFAULT '[]',
  state           TEXT NOT NULL,
  result          TEXT NOT NULL DEFAULT '',
  detail          TEXT NOT NULL DEFAULT '',
  started_at      TEXT NOT NULL,
  finished_at     TEXT
);
CREATE INDEX drills_open ON drills (state) WHERE state != 'done';
CREATE INDEX drills_policy ON drills (policy, started_at);
