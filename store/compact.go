package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
)

// compactBatch is how many rows one compaction transaction moves: small enough
// that the one writer is never held for long (a createImage intent waits behind at
// most one batch), large enough that a million rows move in minutes.
const compactBatch = 200

// EventLineageCompacted is the audit event of a compaction pass.
const EventLineageCompacted = "lineage_compacted"

// compactCandidates picks the oldest deleted rows past the horizon from
// images_deleted_at, named, because without statistics SQLite prefers images_state
// and walks every deleted row (store/plan_test.go explains it).
const compactCandidates = `SELECT id FROM images INDEXED BY images_deleted_at WHERE state = 'deleted' AND deleted_at < ? ORDER BY deleted_at LIMIT ?`

// CompactLineage moves the images deleted before before (and their snapshot rows)
// from the lineage tables to images_archive, compactBatch rows per transaction, and
// returns how many it moved. `why` still answers for them (ArchivedImage); their
// events stay where they are. It stops early, without error, when ctx ends between
// batches.
func (s *Store) CompactLineage(ctx context.Context, before time.Time) (int, error) {
	moved := 0
	for ctx.Err() == nil {
		n, err := s.compactBatch(ctx, before)
		moved += n
		if err != nil {
			return moved, fmt.Errorf("compact lineage: %w", err)
		}
		if n < compactBatch {
			break
		}
	}
	if moved > 0 {
		if _, err := s.AddEvent(context.WithoutCancel(ctx), Event{Kind: EventLineageCompacted,
			Message: fmt.Sprintf("%d deleted images from before %s moved to the archive", moved, before.UTC().Format(time.RFC3339))}); err != nil {
			return moved, err
		}
	}
	return moved, nil
}

func (s *Store) compactBatch(ctx context.Context, before time.Time) (int, error) {
	n := 0
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, compactCandidates, fmtTime(before), compactBatch)
		if err != nil {
			return err
		}
		var ids []any
		for rows.Next() {
			var id int64
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return err
			}
			ids = append(ids, id)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		if len(ids) == 0 {
			return nil
		}
		in := "(" + inMarks(len(ids)) + ")"
		args := append([]any{s.stamp()}, ids...)
		if _, err := tx.ExecContext(ctx, `INSERT INTO images_archive (id, image_id, name, policy, server_id, server_name,
				volume_backed, slot, owner, state, reason, delete_reason, requested_at, active_at, failed_at, deleted_at,
				snapshots, compacted_at)
			SELECT i.id, i.image_id, i.name, i.policy, i.server_id, i.server_name, i.volume_backed, i.slot, i.owner, i.state,
				i.reason, i.delete_reason, i.requested_at, i.active_at, i.failed_at, i.deleted_at,
				ifnull((SELECT group_concat(sn.snapshot_id || ' ' || sn.state, char(10)) FROM snapshots sn WHERE sn.image_row = i.id), ''),
				?
			FROM images i WHERE i.id IN `+in, args...); err != nil {
			return fmt.Errorf("archive: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM snapshots WHERE image_row IN `+in, ids...); err != nil {
			return fmt.Errorf("drop snapshot rows: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM images WHERE state = 'deleted' AND id IN `+in, ids...); err != nil {
			return fmt.Errorf("drop image rows: %w", err)
		}
		n = len(ids)
		return nil
	})
	return n, err
}

// ArchivedImage is what the archive keeps of a compacted image.
type ArchivedImage struct {
	Row          int64
	ImageID      string
	Name         string
	Policy       string
	ServerID     string
	ServerName   string
	VolumeBacked bool
	Slot         time.Time
	State        ImageState
	Reason       string
	DeleteReason string
	RequestedAt  time.Time
	ActiveAt     time.Time
	FailedAt     time.Time
	DeletedAt    time.Time
	// Snapshots are the snapshot rows it had, "SNAPSHOT_ID STATE" each.
	Snapshots   []string
	CompactedAt time.Time
}

// ArchivedImageByID returns the archive's row of a Glance image id, ErrNotFound if
// the archive has none.
func (s *Store) ArchivedImageByID(ctx context.Context, imageID string) (ArchivedImage, error) {
	var a ArchivedImage
	var imageIDs, slot, requested, active, failed, deleted, compacted sql.NullString
	var state, snaps string
	err := s.reader().QueryRowContext(ctx, `SELECT id, image_id, name, policy, server_id, server_name, volume_backed, slot,
			state, reason, delete_reason, requested_at, active_at, failed_at, deleted_at, snapshots, compacted_at
		FROM images_archive WHERE image_id = ?`, imageID).Scan(&a.Row, &imageIDs, &a.Name, &a.Policy, &a.ServerID, &a.ServerName,
		&a.VolumeBacked, &slot, &state, &a.Reason, &a.DeleteReason, &requested, &active, &failed, &deleted, &snaps, &compacted)
	if errors.Is(err, sql.ErrNoRows) {
		return ArchivedImage{}, fmt.Errorf("archived image %s: %w", imageID, ErrNotFound)
	}
	if err != nil {
		return ArchivedImage{}, fmt.Errorf("read archived image %s: %w", imageID, err)
	}
	a.ImageID, a.State = imageIDs.String, ImageState(state)
	for _, p := range []struct {
		dst *time.Time
		src sql.NullString
	}{{&a.Slot, slot}, {&a.RequestedAt, requested}, {&a.ActiveAt, active}, {&a.FailedAt, failed}, {&a.DeletedAt, deleted},
		{&a.CompactedAt, compacted}} {
		if *p.dst, err = parseTime(p.src); err != nil {
			return ArchivedImage{}, fmt.Errorf("archived image %s: %w", imageID, err)
		}
	}
	if snaps != "" {
		a.Snapshots = strings.Split(snaps, "\n")
	}
	return a, nil
}
