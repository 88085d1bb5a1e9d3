-- 0005_lineage_archive: deleted images older than lineage_retention leave the hot
-- images table for images_archive, so that the lineage the daemon reads at every
-- run, prune and reconcile does not grow with history. The archive keeps what
-- `imagekeeper why` shows of a deleted image; its audit stays in events (which
-- name the image id and row), and its snapshot rows are summarised in snapshots.

CREATE TABLE images_archive (
    id            INTEGER PRIMARY KEY, -- the row id it had in images (events.image_row)
    image_id      TEXT,
    name          TEXT NOT NULL,
    policy        TEXT NOT NULL,
    server_id     TEXT NOT NULL,
    server_name   TEXT NOT NULL DEFAULT '',
    volume_backed INTEGER NOT NULL DEFAULT 0,
    slot          TEXT NOT NULL,
    owner         TEXT NOT NULL,
    state         TEXT NOT NULL,
    reason        TEXT NOT NULL DEFAULT '',
    delete_reason TEXT NOT NULL DEFAULT '',
    requested_at  TEXT NOT NULL,
    active_at     TEXT,
    failed_at     TEXT,
    deleted_at    TEXT,
    -- snapshots: "SNAPSHOT_ID STATE" per line, the rows dropped from snapshots.
    snapshots     TEXT NOT NULL DEFAULT '',
    compacted_at  TEXT NOT NULL
);
CREATE INDEX images_archive_image_id ON images_archive (image_id) WHERE image_id IS NOT NULL;

-- The compaction's candidates, oldest first, without walking every deleted row.
CREATE INDEX images_deleted_at ON images (deleted_at) WHERE state = 'deleted';
