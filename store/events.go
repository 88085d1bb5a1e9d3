package store

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"
)

// Event kinds written by the store's own state changes and by the backup run. Other
// writers (retention, reconcile, the daemon) may add kinds of their own; the kind is
// free text, these are the ones this package writes.
const (
	EventSlotStarted    = "slot_started"
	EventSlotFinished   = "slot_finished"
	EventSlotRecorded   = "slot_recorded"
	EventServerSkipped  = "server_skipped"
	EventImageRequested = "image_requested"
	EventCreateAttempt  = "create_attempt"
	EventImageCreating  = "image_creating"
	EventImageAdopted   = "image_adopted"
	EventImageGood      = "image_good"
	// EventImageLateGood: an image failed by wait_timeout completed within its late
	// window (or reconcile found it complete) and is good after all.
	EventImageLateGood = "image_late_good"
	// EventImageHollow: a good image lost a volume snapshot and is failed (hollow).
	EventImageHollow   = "image_hollow"
	EventImageFailed   = "image_failed"
	EventImageNote     = "image_note"
	EventIntentDropped = "intent_dropped"
	EventSnapshotState = "snapshot_state"
	EventSnapshotAdded = "snapshot_added"
	// EventServerLeft says a server with good images is no longer selected by the
	// policy (retagged, moved, deleted). It names the server but does not make it
	// one of the slot's live servers.
	EventServerLeft = "server_left_selection"
)

// Event is one line of the audit: a state change or a decision, with its reason.
type Event struct {
	ID         int64
	At         time.Time
	Kind       string
	Policy     string
	ServerID   string
	ImageRow   int64 // images.id; 0 when the event is not about one image
	ImageID    string
	SnapshotID string
	Slot       time.Time
	SlotID     int64 // slots.id; 0 when not about one slot
	Message    string
}

// AddEvent appends an event; At defaults to the store's clock.
func (s *Store) AddEvent(ctx context.Context, e Event) (int64, error) {
	var id int64
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		var err error
		id, err = s.insertEvent(ctx, tx, e)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("add event %s: %w", e.Kind, err)
	}
	return id, nil
}

// insertEvent appends e inside tx, so that a state change and its event commit
// together.
func (s *Store) insertEvent(ctx context.Context, tx *sql.Tx, e Event) (int64, error) {
	at := e.At
	if at.IsZero() {
		at = s.now()
	}
	var row, slotID any
	if e.ImageRow != 0 {
		row = e.ImageRow
	}
	if e.SlotID != 0 {
		slotID = e.SlotID
	}
	slot := ""
	if !e.Slot.IsZero() {
		slot = e.Slot.UTC().Format(timeFormat)
	}
	res, err := tx.ExecContext(ctx, `INSERT INTO events
		(at, kind, policy, server_id, image_row, image_id, snapshot_id, slot, slot_id, message)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		fmtTime(at), e.Kind, e.Policy, e.ServerID, row, e.ImageID, e.SnapshotID, slot, slotID, e.Message)
	if err != nil {
		return 0, fmt.Errorf("insert event %s: %w", e.Kind, err)
	}
	return res.LastInsertId()
}

// EventFilter selects events; zero fields do not filter.
type EventFilter struct {
	Policy   string
	ServerID string
	ImageRow int64
	ImageID  string
	SlotID   int64
	Kind     string
	Since    time.Time
	// Limit caps the result to the newest Limit events (still returned oldest first).
	Limit int
}

// Events returns the events that match f, oldest first.
func (s *Store) Events(ctx context.Context, f EventFilter) ([]Event, error) {
	var where []string
	var args []any
	add := func(cond string, v any) {
		where = append(where, cond)
		args = append(args, v)
	}
	if f.Policy != "" {
		add("policy = ?", f.Policy)
	}
	if f.ServerID != "" {
		add("server_id = ?", f.ServerID)
	}
	if f.ImageRow != 0 {
		add("image_row = ?", f.ImageRow)
	}
	if f.ImageID != "" {
		add("image_id = ?", f.ImageID)
	}
	if f.SlotID != 0 {
		add("slot_id = ?", f.SlotID)
	}
	if f.Kind != "" {
		add("kind = ?", f.Kind)
	}
	if !f.Since.IsZero() {
		add("at >= ?", fmtTime(f.Since))
	}
	q := `SELECT id, at, kind, policy, server_id, image_row, image_id, snapshot_id, slot, slot_id, message FROM events`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY id DESC"
	if f.Limit > 0 {
		q += fmt.Sprintf(" LIMIT %d", f.Limit)
	}
	rows, err := s.reader().QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list events: %w", err)
	}
	defer rows.Close()
	var out []Event
	for rows.Next() {
		var e Event
		var at, slot sql.NullString
		var row, slotID sql.NullInt64
		if err := rows.Scan(&e.ID, &at, &e.Kind, &e.Policy, &e.ServerID, &row, &e.ImageID, &e.SnapshotID, &slot, &slotID, &e.Message); err != nil {
			return nil, fmt.Errorf("scan event: %w", err)
		}
		if e.At, err = parseTime(at); err != nil {
			return nil, err
		}
		if e.Slot, err = parseTime(slot); err != nil {
			return nil, err
		}
		e.ImageRow, e.SlotID = row.Int64, slotID.Int64
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list events: %w", err)
	}
	// Newest-first in SQL so that LIMIT keeps the newest; callers read oldest first.
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out, nil
}
