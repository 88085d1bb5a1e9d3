-- 0001_init: the lineage schema.
--
-- Timestamps are TEXT in UTC, fixed width with nanoseconds
-- ('2006-01-02T15:04:05.000000000Z'), so that text order is time order and the
-- sqlite3 shell shows them readably. NULL means "not yet".

-- installation holds this installation's owner id, made once; it goes into the
-- imagekeeper_owner stamp of every image we request.
CREATE TABLE installation (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    owner      TEXT NOT NULL CHECK (owner <> ''),
    created_at TEXT NOT NULL
);

-- slots: one row per (policy, slot instant). A second run of the same slot updates
-- the row (runs counts them); the events table keeps every attempt.
CREATE TABLE slots (
    id             INTEGER PRIMARY KEY,
    policy         TEXT NOT NULL,
    slot           TEXT NOT NULL,
    due            TEXT NOT NULL,
    trigger        TEXT NOT NULL DEFAULT '' CHECK (trigger IN ('', 'scheduled', 'catch_up', 'manual')),
    policy_version TEXT NOT NULL DEFAULT '',
    config_version TEXT NOT NULL DEFAULT '',
    started_at     TEXT,
    finished_at    TEXT,
    outcome        TEXT NOT NULL DEFAULT 'running'
                   CHECK (outcome IN ('running', 'ran', 'caught_up', 'missed', 'skipped_overlap', 'failed')),
    reason         TEXT NOT NULL DEFAULT '',
    runs           INTEGER NOT NULL DEFAULT 0,
    selected       INTEGER NOT NULL DEFAULT 0,
    good           INTEGER NOT NULL DEFAULT 0,
    failed         INTEGER NOT NULL DEFAULT 0,
    skipped        INTEGER NOT NULL DEFAULT 0,
    existing       INTEGER NOT NULL DEFAULT 0,
    UNIQUE (policy, slot)
);
CREATE INDEX slots_policy_slot ON slots (policy, slot DESC);

-- images: the lineage. (policy, server_id, slot) is the idempotency key: whatever
-- happens, one slot of one policy makes at most one image of a server.
--
-- States: requested (intent written, id not yet known), creating (id known,
-- waiting), good (active and every volume snapshot available), failed (with
-- reason), deleting (deletion journal in progress, delete_reason says why),
-- deleted (image and all its snapshots confirmed gone), kept_protected (Glance
-- refused: protected; not retried every cycle).
CREATE TABLE images (
    id                INTEGER PRIMARY KEY,
    image_id          TEXT UNIQUE,
    name              TEXT NOT NULL,
    policy            TEXT NOT NULL,
    server_id         TEXT NOT NULL,
    server_name       TEXT NOT NULL DEFAULT '',
    availability_zone TEXT NOT NULL DEFAULT '',
    volume_backed     INTEGER NOT NULL DEFAULT 0 CHECK (volume_backed IN (0, 1)),
    slot              TEXT NOT NULL,
    slot_id           INTEGER REFERENCES slots (id),
    owner             TEXT NOT NULL,
    metadata          TEXT NOT NULL DEFAULT '{}',
    policy_version    TEXT NOT NULL DEFAULT '',
    config_version    TEXT NOT NULL DEFAULT '',
    state             TEXT NOT NULL
                      CHECK (state IN ('requested', 'creating', 'good', 'failed', 'deleting', 'deleted', 'kept_protected')),
    reason            TEXT NOT NULL DEFAULT '',
    adopted           INTEGER NOT NULL DEFAULT 0 CHECK (adopted IN (0, 1)),
    attempts          INTEGER NOT NULL DEFAULT 0,
    size_bytes        INTEGER NOT NULL DEFAULT 0,
    requested_at      TEXT NOT NULL,
    created_at        TEXT,
    active_at         TEXT,
    failed_at         TEXT,
    delete_reason     TEXT NOT NULL DEFAULT '',
    deleting_at       TEXT,
    deleted_at        TEXT,
    delete_attempts   INTEGER NOT NULL DEFAULT 0,
    next_attempt_at   TEXT,
    last_error        TEXT NOT NULL DEFAULT '',
    updated_at        TEXT NOT NULL,
    UNIQUE (policy, server_id, slot)
);
CREATE INDEX images_state ON images (state);
CREATE INDEX images_policy_server_slot ON images (policy, server_id, slot DESC);
CREATE INDEX images_next_attempt ON images (next_attempt_at) WHERE next_attempt_at IS NOT NULL;

-- snapshots: the Cinder volume snapshots behind a volume-backed image, one per
-- snapshot_id of its block_device_mapping. Deleting a Glance image leaves them
-- behind: the deletion journal deletes them after the image is confirmed gone.
--
-- States: creating, available, error (Cinder error while creating), missing (404
-- while waiting), deleting, deleted, kept_in_use (a volume depends on it; kept and
-- reported), error_deleting (Cinder error_deleting).
CREATE TABLE snapshots (
    id              INTEGER PRIMARY KEY,
    snapshot_id     TEXT NOT NULL UNIQUE,
    image_row       INTEGER NOT NULL REFERENCES images (id),
    volume_id       TEXT NOT NULL DEFAULT '',
    device_name     TEXT NOT NULL DEFAULT '',
    boot_index      INTEGER,
    size_gb         INTEGER NOT NULL DEFAULT 0,
    state           TEXT NOT NULL
                    CHECK (state IN ('creating', 'available', 'error', 'missing', 'deleting', 'deleted', 'kept_in_use', 'error_deleting')),
    reason          TEXT NOT NULL DEFAULT '',
    created_at      TEXT NOT NULL,
    available_at    TEXT,
    deleting_at     TEXT,
    deleted_at      TEXT,
    delete_attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT,
    last_error      TEXT NOT NULL DEFAULT '',
    updated_at      TEXT NOT NULL
);
CREATE INDEX snapshots_image_row ON snapshots (image_row);
CREATE INDEX snapshots_state ON snapshots (state);

-- events: the append-only audit of every state change and decision, with its
-- reason. Deliberately without foreign keys: the audit must outlive anything it
-- mentions (an intent row dropped because the server was busy, for example).
CREATE TABLE events (
    id          INTEGER PRIMARY KEY,
    at          TEXT NOT NULL,
    kind        TEXT NOT NULL,
    policy      TEXT NOT NULL DEFAULT '',
    server_id   TEXT NOT NULL DEFAULT '',
    image_row   INTEGER,
    image_id    TEXT NOT NULL DEFAULT '',
    snapshot_id TEXT NOT NULL DEFAULT '',
    slot        TEXT NOT NULL DEFAULT '',
    slot_id     INTEGER,
    message     TEXT NOT NULL DEFAULT ''
);
CREATE INDEX events_image_row ON events (image_row) WHERE image_row IS NOT NULL;
CREATE INDEX events_image_id ON events (image_id) WHERE image_id <> '';
CREATE INDEX events_policy_at ON events (policy, at);

CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only');
END;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only');
END;
