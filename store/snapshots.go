package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// SnapshotState is the lineage state of a volume snapshot row.
type SnapshotState string

// Snapshot states.
const (
	// SnapshotCreating: Cinder is still making it.
	SnapshotCreating SnapshotState = "creating"
	// SnapshotAvailable: complete.
	SnapshotAvailable SnapshotState = "available"
	// SnapshotError: Cinder put it in error while creating it.
	SnapshotError SnapshotState = "error"
	// SnapshotMissing: Cinder answered 404 while we waited for it.
	SnapshotMissing SnapshotState = "missing"
	// SnapshotDeleting: we asked Cinder to delete it and wait for it to go.
	SnapshotDeleting SnapshotState = "deleting"
	// SnapshotDeleted: confirmed gone.
	SnapshotDeleted SnapshotState = "deleted"
	// SnapshotKeptInUse: Cinder refused to delete it because a volume depends on it.
	SnapshotKeptInUse SnapshotState = "kept_in_use"
	// SnapshotErrorDeleting: Cinder's error_deleting.
	SnapshotErrorDeleting SnapshotState = "error_deleting"
)

// Snapshot is one Cinder volume snapshot behind a volume-backed image.
type Snapshot struct {
	// Row is snapshots.id.
	Row        int64
	SnapshotID string
	// ImageRow is the lineage row (images.id) of the image that names it.
	ImageRow   int64
	VolumeID   string
	DeviceName string
	BootIndex  *int
	SizeGB     int
	State      SnapshotState
	Reason     string
	CreatedAt  time.Time
	// AvailableAt is when we saw it available.
	AvailableAt time.Time
	// Deletion journal fields (written by the retention engineer's code).
	DeletingAt     time.Time
	DeletedAt      time.Time
	DeleteAttempts int
	NextAttemptAt  time.Time
	LastError      string
	UpdatedAt      time.Time
}

const snapshotColumns = `id, snapshot_id, image_row, volume_id, device_name, boot_index, size_gb, state, reason,
	created_at, available_at, deleting_at, deleted_at, delete_attempts, next_attempt_at, last_error, updated_at`

func scanSnapshot(sc interface{ Scan(...any) error }) (Snapshot, error) {
	var sn Snapshot
	var boot sql.NullInt64
	var state string
	var created, available, deleting, deleted, next, updated sql.NullString
	err := sc.Scan(&sn.Row, &sn.SnapshotID, &sn.ImageRow, &sn.VolumeID, &sn.DeviceName, &boot, &sn.SizeGB, &state,
		&sn.Reason, &created, &available, &deleting, &deleted, &sn.DeleteAttempts, &next, &sn.LastError, &updated)
	if err != nil {
		return Snapshot{}, err
	}
	sn.State = SnapshotState(state)
	if boot.Valid {
		b := int(boot.Int64)
		sn.BootIndex = &b
	}
	for _, p := range []struct {
		dst *time.Time
		src sql.NullString
	}{{&sn.CreatedAt, created}, {&sn.AvailableAt, available}, {&sn.DeletingAt, deleting}, {&sn.DeletedAt, deleted},
		{&sn.NextAttemptAt, next}, {&sn.UpdatedAt, updated}} {
		if *p.dst, err = parseTime(p.src); err != nil {
			return Snapshot{}, err
		}
	}
	return sn, nil
}

// AddSnapshots records the snapshots an image's block_device_mapping names, in state
// creating unless given. A snapshot already recorded for the same image is left
// as it is; one recorded for another image is an ErrConflict (a snapshot belongs to
// exactly one image).
func (s *Store) AddSnapshots(ctx context.Context, imageRow int64, snaps []Snapshot) error {
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		im, err := imageInTx(ctx, tx, imageRow)
		if err != nil {
			return err
		}
		now := s.stamp()
		for _, sn := range snaps {
			if sn.SnapshotID == "" {
				return errors.New("empty snapshot id")
			}
			var owner int64
			err := tx.QueryRowContext(ctx, `SELECT image_row FROM snapshots WHERE snapshot_id = ?`, sn.SnapshotID).Scan(&owner)
			if err == nil {
				if owner != imageRow {
					return fmt.Errorf("%w: snapshot %s belongs to image row %d", ErrConflict, sn.SnapshotID, owner)
				}
				continue
			}
			if !errors.Is(err, sql.ErrNoRows) {
				return err
			}
			state := sn.State
			if state == "" {
				state = SnapshotCreating
			}
			var boot any
			if sn.BootIndex != nil {
				boot = *sn.BootIndex
			}
			var avail any
			if state == SnapshotAvailable {
				avail = now
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO snapshots (snapshot_id, image_row, volume_id, device_name, boot_index,
					size_gb, state, reason, created_at, available_at, updated_at)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
				sn.SnapshotID, imageRow, sn.VolumeID, sn.DeviceName, boot, sn.SizeGB, string(state), sn.Reason, now, avail, now); err != nil {
				return err
			}
			// Nova's block_device_mapping names no volume: the first answer of
			// Cinder does (UpdateSnapshot's event).
			msg := fmt.Sprintf("volume snapshot %s%s (%s) named by block_device_mapping: %s",
				sn.SnapshotID, ofVolume(sn.VolumeID), orDash(sn.DeviceName), state)
			if _, err := s.insertEvent(ctx, tx, eventOf(im, EventSnapshotAdded, sn.SnapshotID, msg)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("add snapshots of image row %d: %w", imageRow, err)
	}
	return nil
}

// SnapshotUpdate is what a poll learned about a snapshot; zero fields keep the
// recorded value.
type SnapshotUpdate struct {
	State    SnapshotState
	VolumeID string
	SizeGB   int
	Reason   string
}

// UpdateSnapshot records a snapshot's state (and volume and size when given). An
// event is written only when the state changes, so that polling does not flood the
// audit.
func (s *Store) UpdateSnapshot(ctx context.Context, snapshotID string, u SnapshotUpdate) (Snapshot, error) {
	out, err := s.writeSnapshot(ctx, snapshotID, EventSnapshotState, func(tx *sql.Tx, cur Snapshot) (string, error) {
		state := cur.State
		if u.State != "" {
			state = u.State
		}
		volume, size, reason := cur.VolumeID, cur.SizeGB, cur.Reason
		if u.VolumeID != "" {
			volume = u.VolumeID
		}
		if u.SizeGB != 0 {
			size = u.SizeGB
		}
		if u.Reason != "" || state != cur.State {
			reason = u.Reason
		}
		if state == cur.State && volume == cur.VolumeID && size == cur.SizeGB && reason == cur.Reason {
			return "", errUnchanged
		}
		now := s.stamp()
		avail := fmtTime(cur.AvailableAt)
		if state == SnapshotAvailable && cur.AvailableAt.IsZero() {
			avail = now
		}
		if _, err := tx.ExecContext(ctx, `UPDATE snapshots SET state = ?, volume_id = ?, size_gb = ?, reason = ?,
				available_at = ?, updated_at = ? WHERE id = ?`,
			string(state), volume, size, reason, avail, now, cur.Row); err != nil {
			return "", err
		}
		if state == cur.State {
			return "", nil
		}
		msg := fmt.Sprintf("volume snapshot %s%s: %s -> %s", snapshotID, ofVolume(volume), cur.State, state)
		if reason != "" {
			msg += ": " + reason
		}
		return msg, nil
	})
	if err != nil {
		return Snapshot{}, fmt.Errorf("update snapshot %s: %w", snapshotID, err)
	}
	return out, nil
}

// errUnchanged is what a writeSnapshot write returns when it wrote nothing: the
// row read is the answer, without reading it again.
var errUnchanged = errors.New("unchanged")

// writeSnapshot is the frame of every write to one snapshot row. In one
// transaction it reads the row of snapshotID (ErrNotFound, which the caller names,
// when there is none), lets write decide and update it, reads it back, and when
// write returns a message appends an event of kind carrying the identity of the
// snapshot's image row.
func (s *Store) writeSnapshot(ctx context.Context, snapshotID, kind string,
	write func(tx *sql.Tx, cur Snapshot) (message string, err error)) (Snapshot, error) {
	var out Snapshot
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		cur, err := scanSnapshot(tx.QueryRowContext(ctx, `SELECT `+snapshotColumns+` FROM snapshots WHERE snapshot_id = ?`, snapshotID))
		if errors.Is(err, sql.ErrNoRows) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		msg, err := write(tx, cur)
		if errors.Is(err, errUnchanged) {
			out = cur
			return nil
		}
		if err != nil {
			return err
		}
		if out, err = scanSnapshot(tx.QueryRowContext(ctx, `SELECT `+snapshotColumns+` FROM snapshots WHERE id = ?`, cur.Row)); err != nil {
			return err
		}
		if msg == "" {
			return nil
		}
		im, err := imageInTx(ctx, tx, cur.ImageRow)
		if err != nil {
			return err
		}
		_, err = s.insertEvent(ctx, tx, eventOf(im, kind, snapshotID, msg))
		return err
	})
	return out, err
}

// Snapshots returns the snapshots recorded for an image row, in block_device_mapping
// order.
func (s *Store) Snapshots(ctx context.Context, imageRow int64) ([]Snapshot, error) {
	return s.querySnapshots(ctx, `SELECT `+snapshotColumns+` FROM snapshots WHERE image_row = ? ORDER BY id`, imageRow)
}

// SnapshotsByState returns every snapshot in one of states (all when none), ordered
// by row.
func (s *Store) SnapshotsByState(ctx context.Context, states ...SnapshotState) ([]Snapshot, error) {
	q := `SELECT ` + snapshotColumns + ` FROM snapshots`
	var args []any
	if len(states) > 0 {
		q += ` WHERE state IN (`
		for i, st := range states {
			if i > 0 {
				q += ", "
			}
			q += "?"
			args = append(args, string(st))
		}
		q += ")"
	}
	return s.querySnapshots(ctx, q+` ORDER BY id`, args...)
}

// SnapshotByID returns one snapshot row by its Cinder id, ErrNotFound if none.
func (s *Store) SnapshotByID(ctx context.Context, snapshotID string) (Snapshot, error) {
	return queryOne(ctx, s.reader(), "snapshot "+snapshotID, scanSnapshot,
		`SELECT `+snapshotColumns+` FROM snapshots WHERE snapshot_id = ?`, snapshotID)
}

func (s *Store) querySnapshots(ctx context.Context, q string, args ...any) ([]Snapshot, error) {
	return queryAll(ctx, s.reader(), "snapshots", scanSnapshot, q, args...)
}
