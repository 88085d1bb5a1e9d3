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

// ImageState is the lineage state of an image row.
type ImageState string

// Image states. An image moves requested -> creating -> good or failed; deletion (the
// retention engineer's journal) moves good or failed -> deleting -> deleted, or
// kept_protected when Glance refuses because the image is protected.
const (
	// ImageRequested: the intent row is written; the image id is not known yet (the
	// call has not been made, or its outcome is unknown).
	ImageRequested ImageState = "requested"
	// ImageCreating: the id is known; waiting for the image and its snapshots.
	ImageCreating ImageState = "creating"
	// ImageGood: the image is active and every volume snapshot behind it available.
	ImageGood ImageState = "good"
	// ImageFailed: the image never became good; Reason says why.
	ImageFailed ImageState = "failed"
	// ImageDeleting: deletion in progress; DeleteReason says why.
	ImageDeleting ImageState = "deleting"
	// ImageDeleted: the image and every snapshot behind it are confirmed gone.
	ImageDeleted ImageState = "deleted"
	// ImageKeptProtected: Glance refused to delete a protected image; we keep it.
	ImageKeptProtected ImageState = "kept_protected"
)

// Failure is the kind of a failed row's failure, where retention and the late watch
// must tell them apart.
type Failure string

// Failure kinds.
const (
	// FailureOther: any failure that is final (Nova or Glance said so).
	FailureOther Failure = ""
	// FailureTimeout: not good within wait_timeout. The image may still complete;
	// it is watched until LateUntil and becomes good if it does (image_late_good).
	FailureTimeout Failure = "timeout"
	// FailureHollow: the image was good, then a volume snapshot behind it went
	// missing or to error. It can no longer boot and never counts as a backup;
	// retention deletes it and its remaining snapshots like any failed image.
	FailureHollow Failure = "hollow"
)

// ImageStates lists every image state, in lifecycle order.
var ImageStates = []ImageState{ImageRequested, ImageCreating, ImageGood, ImageFailed, ImageDeleting, ImageDeleted, ImageKeptProtected}

// Image is one lineage row: an image we asked for, keyed by (Policy, ServerID, Slot).
type Image struct {
	// Row is the lineage row id (images.id), known before the image id is.
	Row int64
	// ImageID is the Glance image id, "" until known.
	ImageID      string
	Name         string
	Policy       string
	ServerID     string
	ServerName   string
	AZ           string
	VolumeBacked bool
	Slot         time.Time
	SlotID       int64
	// Owner is the imagekeeper_owner stamp we put on the image.
	Owner string
	// Metadata is the createImage metadata we sent: rendered policy metadata plus
	// the stamp.
	Metadata      map[string]string
	PolicyVersion string
	ConfigVersion string
	State         ImageState
	// Reason explains the current state (why it failed, why it is still requested).
	Reason string
	// Failure is the kind of a failed row's failure (timeout, hollow), "" otherwise.
	Failure Failure
	// LateUntil is the end of a timed-out row's late window: until then the image
	// is still watched, and retention keeps it. Zero when not watched.
	LateUntil time.Time
	// Adopted is true when the id was found by our stamp rather than returned by
	// createImage (an unknown outcome or a crash).
	Adopted bool
	// Attempts counts createImage calls made for this row.
	Attempts    int
	SizeBytes   int64
	RequestedAt time.Time
	CreatedAt   time.Time // when the id became known
	ActiveAt    time.Time // when it became good
	FailedAt    time.Time
	// Deletion journal fields (written by the retention engineer's code).
	DeleteReason   string
	DeletingAt     time.Time
	DeletedAt      time.Time
	DeleteAttempts int
	NextAttemptAt  time.Time
	LastError      string
	UpdatedAt      time.Time
}

const imageColumns = `id, image_id, name, policy, server_id, server_name, availability_zone, volume_backed, slot, slot_id,
	owner, metadata, policy_version, config_version, state, reason, adopted, attempts, size_bytes,
	requested_at, created_at, active_at, failed_at, delete_reason, deleting_at, deleted_at, delete_attempts,
	next_attempt_at, last_error, updated_at, failure, late_until`

func scanImage(sc interface{ Scan(...any) error }) (Image, error) {
	var im Image
	var imageID, slot, requested, created, active, failed, deleting, deleted, next, updated, late sql.NullString
	var slotID sql.NullInt64
	var meta, state, failure string
	err := sc.Scan(&im.Row, &imageID, &im.Name, &im.Policy, &im.ServerID, &im.ServerName, &im.AZ, &im.VolumeBacked,
		&slot, &slotID, &im.Owner, &meta, &im.PolicyVersion, &im.ConfigVersion, &state, &im.Reason, &im.Adopted,
		&im.Attempts, &im.SizeBytes, &requested, &created, &active, &failed, &im.DeleteReason, &deleting, &deleted,
		&im.DeleteAttempts, &next, &im.LastError, &updated, &failure, &late)
	if err != nil {
		return Image{}, err
	}
	im.ImageID, im.SlotID, im.State, im.Failure = imageID.String, slotID.Int64, ImageState(state), Failure(failure)
	if meta != "" {
		if err := json.Unmarshal([]byte(meta), &im.Metadata); err != nil {
			return Image{}, fmt.Errorf("image row %d: decode metadata: %w", im.Row, err)
		}
	}
	for _, p := range []struct {
		dst *time.Time
		src sql.NullString
	}{{&im.Slot, slot}, {&im.RequestedAt, requested}, {&im.CreatedAt, created}, {&im.ActiveAt, active},
		{&im.FailedAt, failed}, {&im.DeletingAt, deleting}, {&im.DeletedAt, deleted}, {&im.NextAttemptAt, next},
		{&im.UpdatedAt, updated}, {&im.LateUntil, late}} {
		if *p.dst, err = parseTime(p.src); err != nil {
			return Image{}, err
		}
	}
	return im, nil
}

// Intent is what the backup run knows about an image before it asks for it.
type Intent struct {
	Policy        string
	ServerID      string
	ServerName    string
	AZ            string
	VolumeBacked  bool
	Slot          time.Time
	SlotID        int64
	Name          string
	Metadata      map[string]string
	PolicyVersion string
	ConfigVersion string
}

// RecordIntent writes the intent row of (Policy, ServerID, Slot) in state requested,
// before any cloud call. If a row for that key exists already, it is returned
// unchanged with created false: that is the idempotency of a slot.
func (s *Store) RecordIntent(ctx context.Context, in Intent) (im Image, created bool, err error) {
	if in.Policy == "" || in.ServerID == "" || in.Slot.IsZero() || in.Name == "" {
		return Image{}, false, errors.New("record intent: policy, server, slot and name are required")
	}
	meta, err := json.Marshal(in.Metadata)
	if err != nil {
		return Image{}, false, fmt.Errorf("record intent: encode metadata: %w", err)
	}
	if in.Metadata == nil {
		meta = []byte("{}")
	}
	err = s.inTx(ctx, func(tx *sql.Tx) error {
		prev, err := scanImage(tx.QueryRowContext(ctx, `SELECT `+imageColumns+` FROM images
			WHERE policy = ? AND server_id = ? AND slot = ?`, in.Policy, in.ServerID, fmtTime(in.Slot)))
		if err == nil {
			im = prev
			return nil
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		var slotID any
		if in.SlotID != 0 {
			slotID = in.SlotID
		}
		now := s.stamp()
		res, err := tx.ExecContext(ctx, `INSERT INTO images (name, policy, server_id, server_name, availability_zone,
				volume_backed, slot, slot_id, owner, metadata, policy_version, config_version, state, requested_at, updated_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'requested', ?, ?)`,
			in.Name, in.Policy, in.ServerID, in.ServerName, in.AZ, boolInt(in.VolumeBacked), fmtTime(in.Slot), slotID,
			s.owner, string(meta), in.PolicyVersion, in.ConfigVersion, now, now)
		if err != nil {
			return err
		}
		im, err = s.insertedImage(ctx, tx, res, Event{Kind: EventImageRequested, Policy: in.Policy, ServerID: in.ServerID,
			Slot: in.Slot, SlotID: in.SlotID,
			Message: fmt.Sprintf("intent recorded: image %q of server %s (policy version %s)", in.Name, orDash(in.ServerName), orDash(in.PolicyVersion))})
		created = err == nil
		return err
	})
	if err != nil {
		return Image{}, false, fmt.Errorf("record intent %s/%s/%s: %w", in.Policy, in.ServerID, in.Slot.UTC().Format(time.RFC3339), err)
	}
	return im, created, nil
}

// transition applies an UPDATE to one image row when its state is one of from, and
// appends an event of ev's Kind and Message, carrying the row's identity, in the
// same transaction. It returns
// ErrConflict, naming the actual state, when the row is in no state of from.
func (s *Store) transition(ctx context.Context, row int64, from []ImageState, ev Event, set string, args ...any) (Image, error) {
	return s.transitionChecked(ctx, row, from, nil, ev, set, args...)
}

// transitionChecked is transition with check run inside the transaction, on the
// current row, before the update.
func (s *Store) transitionChecked(ctx context.Context, row int64, from []ImageState, check func(tx *sql.Tx, cur Image) error,
	ev Event, set string, args ...any) (Image, error) {
	var out Image
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		cur, err := imageInTx(ctx, tx, row)
		if err != nil {
			return err
		}
		ok := false
		for _, st := range from {
			if cur.State == st {
				ok = true
			}
		}
		if !ok {
			return fmt.Errorf("%w: image row %d is %s", ErrConflict, row, cur.State)
		}
		if check != nil {
			if err := check(tx, cur); err != nil {
				return err
			}
		}
		all := append(append([]any{}, args...), s.stamp(), row)
		if _, err := tx.ExecContext(ctx, `UPDATE images SET `+set+`, updated_at = ? WHERE id = ?`, all...); err != nil {
			return err
		}
		if out, err = imageInTx(ctx, tx, row); err != nil {
			return err
		}
		_, err = s.insertEvent(ctx, tx, eventOf(out, ev.Kind, "", ev.Message))
		return err
	})
	return out, err
}

// BeginAttempt records that createImage is about to be called for an id-less row
// (requested, or failed without an id): the row goes to requested, attempts counts
// the call, and name and metadata are what is being sent.
func (s *Store) BeginAttempt(ctx context.Context, row int64, name string, metadata map[string]string) (Image, error) {
	meta, err := json.Marshal(metadata)
	if err != nil {
		return Image{}, fmt.Errorf("begin attempt for image row %d: encode metadata: %w", row, err)
	}
	cur, err := s.Image(ctx, row)
	if err != nil {
		return Image{}, err
	}
	if cur.ImageID != "" {
		return Image{}, fmt.Errorf("begin attempt for image row %d: %w: it already has image %s", row, ErrConflict, cur.ImageID)
	}
	im, err := s.transition(ctx, row, []ImageState{ImageRequested, ImageFailed},
		Event{Kind: EventCreateAttempt, Message: fmt.Sprintf("calling createImage (attempt %d)", cur.Attempts+1)},
		`state = 'requested', reason = '', failed_at = NULL, attempts = attempts + 1, name = ?, metadata = ?, requested_at = ?`,
		name, string(meta), s.stamp())
	if err != nil {
		return Image{}, fmt.Errorf("begin attempt for image row %d: %w", row, err)
	}
	return im, nil
}

// SetImageID records the Glance id of a requested row and moves it to creating.
// adopted says the id was found by our stamp rather than returned by the call;
// message is the reason written to the audit.
func (s *Store) SetImageID(ctx context.Context, row int64, imageID string, adopted bool, message string) (Image, error) {
	if imageID == "" {
		return Image{}, fmt.Errorf("set image id of row %d: empty id", row)
	}
	kind := EventImageCreating
	if adopted {
		kind = EventImageAdopted
	}
	im, err := s.transition(ctx, row, []ImageState{ImageRequested, ImageFailed}, Event{Kind: kind, Message: message},
		`image_id = ?, state = 'creating', reason = '', failed_at = NULL, adopted = ?, created_at = ?`,
		imageID, boolInt(adopted), s.stamp())
	if err != nil {
		return Image{}, fmt.Errorf("set image id %s of row %d: %w", imageID, row, err)
	}
	return im, nil
}

// Good is what the wait learned about an image that completed.
type Good struct {
	SizeBytes int64
	// AZ is the availability zone the image can boot in; empty keeps the recorded one.
	AZ string
	// ActiveAt is when completion was observed; the store's clock when zero.
	ActiveAt time.Time
	// Message is written to the audit.
	Message string
}

// orDefaults fills what g leaves zero: ActiveAt with now, Message with message.
func (g Good) orDefaults(now time.Time, message string) Good {
	if g.ActiveAt.IsZero() {
		g.ActiveAt = now
	}
	if g.Message == "" {
		g.Message = message
	}
	return g
}

// snapshotsAllIn returns a transition check that refuses (ErrConflict, naming the
// first offender) while any snapshot recorded for the image row is not in state.
// It guards both ends of an image's life: good needs every snapshot available,
// deleted needs every snapshot deleted.
func snapshotsAllIn(ctx context.Context, row int64, state SnapshotState) func(*sql.Tx, Image) error {
	return func(tx *sql.Tx, _ Image) error {
		var id, got string
		err := tx.QueryRowContext(ctx, `SELECT snapshot_id, state FROM snapshots WHERE image_row = ? AND state <> ?
			ORDER BY id LIMIT 1`, row, string(state)).Scan(&id, &got)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		return fmt.Errorf("%w: snapshot %s is %s", ErrConflict, id, got)
	}
}

// MarkGood moves a creating row to good. It refuses (ErrConflict) when any snapshot
// recorded for the image is not available: a good image is a complete backup.
func (s *Store) MarkGood(ctx context.Context, row int64, g Good) (Image, error) {
	allAvailable := snapshotsAllIn(ctx, row, SnapshotAvailable)
	g = g.orDefaults(s.now(), "image active and every volume snapshot available")
	im, err := s.transitionChecked(ctx, row, []ImageState{ImageCreating}, allAvailable, Event{Kind: EventImageGood, Message: g.Message},
		`state = 'good', reason = '', size_bytes = ?, availability_zone = CASE WHEN ? = '' THEN availability_zone ELSE ? END,
		active_at = ?`, g.SizeBytes, g.AZ, g.AZ, fmtTime(g.ActiveAt))
	if err != nil {
		return Image{}, fmt.Errorf("mark image row %d good: %w", row, err)
	}
	return im, nil
}

// MarkFailed moves a requested or creating row to failed with the reason.
func (s *Store) MarkFailed(ctx context.Context, row int64, reason string) (Image, error) {
	im, err := s.transition(ctx, row, []ImageState{ImageRequested, ImageCreating}, Event{Kind: EventImageFailed, Message: reason},
		`state = 'failed', reason = ?, failed_at = ?`, reason, s.stamp())
	if err != nil {
		return Image{}, fmt.Errorf("mark image row %d failed: %w", row, err)
	}
	return im, nil
}

// MarkTimedOut moves a creating row whose image was not good within wait_timeout
// to failed (kind timeout) and opens its late window: until lateUntil the image is
// still watched (MarkLateGood promotes it) and retention keeps it.
func (s *Store) MarkTimedOut(ctx context.Context, row int64, reason string, lateUntil time.Time) (Image, error) {
	im, err := s.transition(ctx, row, []ImageState{ImageCreating}, Event{Kind: EventImageFailed, Message: reason},
		`state = 'failed', reason = ?, failed_at = ?, failure = 'timeout', late_until = ?`, reason, s.stamp(), fmtTime(lateUntil))
	if err != nil {
		return Image{}, fmt.Errorf("mark image row %d timed out: %w", row, err)
	}
	return im, nil
}

// MarkLateGood moves a row that failed by timeout, whose image then completed, to
// good (event image_late_good). Like MarkGood it refuses while any recorded snapshot
// is not available.
func (s *Store) MarkLateGood(ctx context.Context, row int64, g Good) (Image, error) {
	allAvailable := snapshotsAllIn(ctx, row, SnapshotAvailable)
	check := func(tx *sql.Tx, cur Image) error {
		if cur.Failure != FailureTimeout || cur.ImageID == "" {
			return fmt.Errorf("%w: image row %d failed as %q with image %q, not by a timeout", ErrConflict, row, cur.Failure, cur.ImageID)
		}
		return allAvailable(tx, cur)
	}
	g = g.orDefaults(s.now(), "image completed after wait_timeout: active and every volume snapshot available")
	im, err := s.transitionChecked(ctx, row, []ImageState{ImageFailed}, check, Event{Kind: EventImageLateGood, Message: g.Message},
		`state = 'good', reason = '', failure = '', late_until = NULL, failed_at = NULL, size_bytes = ?,
		availability_zone = CASE WHEN ? = '' THEN availability_zone ELSE ? END, active_at = ?`,
		g.SizeBytes, g.AZ, g.AZ, fmtTime(g.ActiveAt))
	if err != nil {
		return Image{}, fmt.Errorf("mark image row %d late good: %w", row, err)
	}
	return im, nil
}

// EndLateWatch closes a timed-out row's late window early (the image failed for
// good, or vanished): retention may then delete it after the grace.
func (s *Store) EndLateWatch(ctx context.Context, row int64, reason string) (Image, error) {
	im, err := s.transition(ctx, row, []ImageState{ImageFailed}, Event{Kind: EventImageFailed, Message: reason},
		`reason = ?, late_until = NULL`, reason)
	if err != nil {
		return Image{}, fmt.Errorf("end late watch of image row %d: %w", row, err)
	}
	return im, nil
}

// LateWatched returns the rows failed by timeout whose late window is still open at
// now (all policies when policy is ""), ordered by policy, server, slot.
func (s *Store) LateWatched(ctx context.Context, policy string, now time.Time) ([]Image, error) {
	q := `SELECT ` + imageColumns + ` FROM images WHERE state = 'failed' AND failure = 'timeout'
		AND image_id IS NOT NULL AND late_until IS NOT NULL AND late_until > ?`
	args := []any{fmtTime(now)}
	if policy != "" {
		q += ` AND policy = ?`
		args = append(args, policy)
	}
	return s.queryImages(ctx, q+` ORDER BY policy, server_id, slot, id`, args...)
}

// MarkHollow moves a good row whose image lost a volume snapshot (gone, or in
// error) to failed (kind hollow): it can no longer boot, so it never counts as a
// backup again, and retention deletes it like any failed image after the grace.
func (s *Store) MarkHollow(ctx context.Context, row int64, reason string) (Image, error) {
	im, err := s.transition(ctx, row, []ImageState{ImageGood}, Event{Kind: EventImageHollow, Message: reason},
		`state = 'failed', reason = ?, failure = 'hollow', failed_at = ?, late_until = NULL`, "hollow: "+reason, s.stamp())
	if err != nil {
		return Image{}, fmt.Errorf("mark image row %d hollow: %w", row, err)
	}
	return im, nil
}

// NoteImage records a reason on a row without changing its state (for example
// "outcome unknown, looking for our stamped image"), with an audit event of kind.
func (s *Store) NoteImage(ctx context.Context, row int64, kind, reason string) (Image, error) {
	if kind == "" {
		kind = EventImageNote
	}
	im, err := s.transition(ctx, row, ImageStates, Event{Kind: kind, Message: reason}, `reason = ?`, reason)
	if err != nil {
		return Image{}, fmt.Errorf("note image row %d: %w", row, err)
	}
	return im, nil
}

// DropIntent deletes a requested row that has no image id, when the cloud refused the
// call in a way that proves no image was made (409: server busy), so that a later run
// of the same slot may try again. The audit keeps the event with the reason.
func (s *Store) DropIntent(ctx context.Context, row int64, reason string) error {
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		cur, err := imageInTx(ctx, tx, row)
		if err != nil {
			return err
		}
		if cur.State != ImageRequested || cur.ImageID != "" {
			return fmt.Errorf("%w: image row %d is %s with id %q", ErrConflict, row, cur.State, cur.ImageID)
		}
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM snapshots WHERE image_row = ?`, row).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("%w: image row %d has %d snapshots", ErrConflict, row, n)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM images WHERE id = ?`, row); err != nil {
			return err
		}
		_, err = s.insertEvent(ctx, tx, eventOf(cur, EventIntentDropped, "", reason))
		return err
	})
	if err != nil {
		return fmt.Errorf("drop intent row %d: %w", row, err)
	}
	return nil
}

// Image returns one lineage row by its row id, ErrNotFound if there is none.
func (s *Store) Image(ctx context.Context, row int64) (Image, error) {
	return queryOne(ctx, s.reader(), fmt.Sprintf("image row %d", row), scanImage,
		`SELECT `+imageColumns+` FROM images WHERE id = ?`, row)
}

// ImageByID returns the lineage row of a Glance image id, ErrNotFound if there is none.
func (s *Store) ImageByID(ctx context.Context, imageID string) (Image, error) {
	return queryOne(ctx, s.reader(), "image "+imageID, scanImage,
		`SELECT `+imageColumns+` FROM images WHERE image_id = ?`, imageID)
}

// ImageByKey returns the lineage row of (policy, server, slot), ErrNotFound if none.
func (s *Store) ImageByKey(ctx context.Context, policy, serverID string, slot time.Time) (Image, error) {
	return queryOne(ctx, s.reader(), fmt.Sprintf("image %s/%s/%s", policy, serverID, slot.UTC().Format(time.RFC3339)), scanImage,
		`SELECT `+imageColumns+` FROM images WHERE policy = ? AND server_id = ? AND slot = ?`, policy, serverID, fmtTime(slot))
}

// ImageFilter selects lineage rows; zero fields do not filter.
type ImageFilter struct {
	Policy   string
	ServerID string
	States   []ImageState
	// Slot selects one slot instant.
	Slot time.Time
	// Limit caps the result (0: no cap).
	Limit int
}

// Images returns the matching rows ordered by policy, server, slot and row.
func (s *Store) Images(ctx context.Context, f ImageFilter) ([]Image, error) {
	q, args := f.query(imageColumns)
	return s.queryImages(ctx, q, args...)
}

// query builds the SELECT of columns over the rows f matches, ordered by policy,
// server, slot and row: the one place that turns an ImageFilter into SQL.
func (f ImageFilter) query(columns string) (string, []any) {
	var where []string
	var args []any
	if f.Policy != "" {
		where, args = append(where, "policy = ?"), append(args, f.Policy)
	}
	if f.ServerID != "" {
		where, args = append(where, "server_id = ?"), append(args, f.ServerID)
	}
	if !f.Slot.IsZero() {
		where, args = append(where, "slot = ?"), append(args, fmtTime(f.Slot))
	}
	if len(f.States) > 0 {
		marks := make([]string, len(f.States))
		for i, st := range f.States {
			marks[i] = "?"
			args = append(args, string(st))
		}
		where = append(where, "state IN ("+strings.Join(marks, ", ")+")")
	}
	q := `SELECT ` + columns + ` FROM images`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	if f.ServerID == "" && (len(f.States) > 0 || !f.Slot.IsZero()) {
		// A state or slot filter is selective: its index (images_policy_state,
		// images_policy_slot, images_state) finds the few rows and they are sorted
		// after. Without the unary +, SQLite picks the (policy, server_id, slot)
		// index because it gives the order, and walks a policy's whole lineage to
		// find them. With a server that index is the right one (one server's rows):
		// the unary + would send SQLite to images_policy_state, which during a slot
		// holds every in-flight row of the policy, read once per server.
		q += " ORDER BY +policy, +server_id, +slot, +id"
	} else {
		q += " ORDER BY policy, server_id, slot, id"
	}
	if f.Limit > 0 {
		q += fmt.Sprintf(" LIMIT %d", f.Limit)
	}
	return q, args
}

func (s *Store) queryImages(ctx context.Context, q string, args ...any) ([]Image, error) {
	return queryAll(ctx, s.reader(), "images", scanImage, q, args...)
}

// queryOne runs a query for one row and scans it with scan; what names the row in
// errors, which wrap ErrNotFound when there is none.
func queryOne[T any](ctx context.Context, db *sql.DB, what string, scan func(interface{ Scan(...any) error }) (T, error),
	q string, args ...any) (T, error) {
	v, err := scan(db.QueryRowContext(ctx, q, args...))
	if errors.Is(err, sql.ErrNoRows) {
		var zero T
		return zero, fmt.Errorf("%s: %w", what, ErrNotFound)
	}
	if err != nil {
		var zero T
		return zero, fmt.Errorf("read %s: %w", what, err)
	}
	return v, nil
}

// imageInTx reads image row inside tx: the current row a write decides on, or the
// row it has just written. A missing row is ErrNotFound, naming the row.
func imageInTx(ctx context.Context, tx *sql.Tx, row int64) (Image, error) {
	im, err := scanImage(tx.QueryRowContext(ctx, `SELECT `+imageColumns+` FROM images WHERE id = ?`, row))
	if errors.Is(err, sql.ErrNoRows) {
		return Image{}, fmt.Errorf("image row %d: %w", row, ErrNotFound)
	}
	return im, err
}

// insertedImage completes the insert of a new image row (res): it appends ev
// about the row (ImageRow filled in) and reads the row back, in the same
// transaction.
func (s *Store) insertedImage(ctx context.Context, tx *sql.Tx, res sql.Result, ev Event) (Image, error) {
	row, err := res.LastInsertId()
	if err != nil {
		return Image{}, err
	}
	ev.ImageRow = row
	if _, err := s.insertEvent(ctx, tx, ev); err != nil {
		return Image{}, err
	}
	return imageInTx(ctx, tx, row)
}

// eventOf is an audit event of kind about image row im, and about one of its
// snapshots when snapshotID is set, carrying the row's identity (policy, server,
// image id, slot) so that the audit can be read by any of them.
func eventOf(im Image, kind, snapshotID, message string) Event {
	return Event{Kind: kind, Policy: im.Policy, ServerID: im.ServerID, ImageRow: im.Row, ImageID: im.ImageID,
		SnapshotID: snapshotID, Slot: im.Slot, SlotID: im.SlotID, Message: message}
}

// queryAll runs a query and scans every row with scan; what names the rows in
// errors. Rows are read to the end before returning, so the connection goes back
// to its pool when it returns.
func queryAll[T any](ctx context.Context, db *sql.DB, what string, scan func(interface{ Scan(...any) error }) (T, error),
	q string, args ...any) ([]T, error) {
	rows, err := db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", what, err)
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, fmt.Errorf("scan %s: %w", what, err)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list %s: %w", what, err)
	}
	return out, nil
}
