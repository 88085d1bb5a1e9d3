-- The hook journal (image.hooks): a row is written before a server's pre hook runs
-- and closed once its post hook has run, so that a process killed in between runs
-- the missing post at its next start before anything else. post_argv (a JSON list)
-- and post_env (a JSON object) are the post hook's command as rendered when pre ran:
-- the next start may have another config, and must still thaw what this one froze.
-- state: 'open' (post still owed), 'done' (post ran, or pre failed and no post is owed).
CREATE TABLE hook_runs (
  id              INTEGER PRIMARY KEY,
  policy          TEXT NOT NULL,
  server_id       TEXT NOT NULL,
  server_name     TEXT NOT NULL,
  slot            TEXT NOT NULL,
  image_row       INTEGER NOT NULL, -- images.id (no foreign key: compaction archives old rows)
  post_argv       TEXT NOT NULL,
  post_env        TEXT NOT NULL,
  post_timeout_ms INTEGER NOT NULL,
  state           TEXT NOT NULL,
  result          TEXT NOT NULL DEFAULT '',
  started_at      TEXT NOT NULL,
  finished_at     TEXT
);
CREATE INDEX hook_runs_open ON hook_runs (state) WHERE state != 'done';
