package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Event kinds of a recovery of the lineage from the cloud's stamps.
const (
	// EventImageRecovered: a row rebuilt from an image's stamp after the lineage
	// was lost.
	EventImageRecovered = "image_recovered"
	// EventOwnerChanged: the installation's owner id was set by a recovery.
	EventOwnerChanged = "owner_changed"
)

// ErrBadOwner is returned by SetOwner for an id that cannot be an owner stamp.
var ErrBadOwner = errors.New("bad owner id")

// Empty reports whether the lineage holds no image and no slot: a fresh database,
// the only one a recovery may write into without being forced.
func (s *Store) Empty(ctx context.Context) (bool, error) {
	var n int
	if err := s.db.QueryRowContext(ctx, `SELECT (SELECT COUNT(*) FROM images) + (SELECT COUNT(*) FROM slots)`).Scan(&n); err != nil {
		return false, fmt.Errorf("count lineage rows: %w", err)
	}
	return n == 0, nil
}

// SetOwner makes owner this installation's id, the stamp every later image gets
// and every deletion checks: a recovered lineage must go on as the installation
// whose images it recovered, or it could never prune them.
func (s *Store) SetOwner(ctx context.Context, owner string) error {
	if owner == "" || strings.ContainsAny(owner, " \t\r\n") || len(owner) > 255 {
		return fmt.Errorf("%w: %q", ErrBadOwner, owner)
	}
	old := s.owner
	if owner == old {
		return nil
	}
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `UPDATE installation SET owner = ? WHERE id = 1`, owner); err != nil {
			return err
		}
		_, err := s.insertEvent(ctx, tx, Event{Kind: EventOwnerChanged,
			Message: fmt.Sprintf("owner id set to %s by a recovery (was %s)", owner, old)})
		return err
	})
	if err != nil {
		return fmt.Errorf("set owner %s: %w", owner, err)
	}
	s.owner = owner
	return nil
}

// Recovered is an image found in the cloud by its stamp, to rebuild its row.
type Recovered struct {
	Policy       string
	ServerID     string
	Slot         time.Time
	Name         string
	ImageID      string
	VolumeBacked bool
	// CreatedAt is when Glance made the image; it becomes the row's request time,
	// so that recovery points keep their real age.
	CreatedAt time.Time
	// Metadata is recorded as the row's metadata (the stamp, at least).
	Metadata map[string]string
}

// RecoverImage writes the row of an image found by its stamp, in state creating
// with adopted set, and an image_recovered event; a wait (ResumeWaits) then settles
// it from Glance and Cinder as it would any image being made. created is false,
// and the existing row is returned, when the lineage already has the image or a row
// for its (policy, server, slot).
func (s *Store) RecoverImage(ctx context.Context, r Recovered) (im Image, created bool, err error) {
	if r.Policy == "" || r.ServerID == "" || r.Slot.IsZero() || r.ImageID == "" {
		return Image{}, false, errors.New("recover image: policy, server, slot and image id are required")
	}
	meta, err := json.Marshal(r.Metadata)
	if err != nil || r.Metadata == nil {
		meta = []byte("{}")
	}
	requested := r.CreatedAt
	if requested.IsZero() {
		requested = r.Slot
	}
	err = s.inTx(ctx, func(tx *sql.Tx) error {
		prev, err := scanImage(tx.QueryRowContext(ctx, `SELECT `+imageColumns+` FROM images
			WHERE image_id = ? OR (policy = ? AND server_id = ? AND slot = ?) ORDER BY id LIMIT 1`,
			r.ImageID, r.Policy, r.ServerID, fmtTime(r.Slot)))
		if err == nil {
			im = prev
			return nil
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		now := s.stamp()
		res, err := tx.ExecContext(ctx, `INSERT INTO images (image_id, name, policy, server_id, server_name,
				availability_zone, volume_backed, slot, owner, metadata, state, adopted, requested_at, created_at, updated_at)
			VALUES (?, ?, ?, ?, '', '', ?, ?, ?, ?, 'creating', 1, ?, ?, ?)`,
			r.ImageID, r.Name, r.Policy, r.ServerID, boolInt(r.VolumeBacked), fmtTime(r.Slot), s.owner, string(meta),
			fmtTime(requested), fmtTime(requested), now)
		if err != nil {
			return err
		}
		im, err = s.insertedImage(ctx, tx, res, Event{Kind: EventImageRecovered, Policy: r.Policy, ServerID: r.ServerID,
			ImageID: r.ImageID, Slot: r.Slot,
			Message: fmt.Sprintf("recovered from the cloud's stamp (owner %s): image %s of server %s, slot %s; its state comes from Glance and Cinder",
				s.owner, r.ImageID, r.ServerID, r.Slot.UTC().Format(time.RFC3339))})
		created = err == nil
		return err
	})
	if err != nil {
		return Image{}, false, fmt.Errorf("recover image %s: %w", r.ImageID, err)
	}
	return im, created, nil
}
