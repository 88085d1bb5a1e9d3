package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Drill states of the drill journal.
const (
	// DrillBooting: the row is written; the drill server is asked for (or about to
	// be). DrillServerID is "" until Nova answered.
	DrillBooting = "booting"
	// DrillCleaning: the result is known; the drill server and its volumes are
	// being deleted.
	DrillCleaning = "cleaning"
	// DrillDone: nothing of the drill is left in the cloud.
	DrillDone = "done"
)

// Drill results, also recorded on the image row (verify_result).
const (
	VerifyOK      = "ok"
	VerifyFailed  = "failed"
	VerifyTimeout = "timeout"
	// VerifyInterrupted is a journal row's result (never an image's) for a drill
	// stopped before it had one.
	VerifyInterrupted = "interrupted"
)

// Event kinds of restore drills.
const (
	EventDrillStarted  = "drill_started"
	EventDrillVerified = "drill_verified"
	EventDrillFailed   = "drill_failed"
	EventDrillCleaned  = "drill_cleaned"
)

// Drill is one row of the drill journal.
type Drill struct {
	ID            int64
	Policy        string
	ServerID      string // the server whose image is drilled
	ImageRow      int64
	ImageID       string
	Token         string // value of the drill server's imagekeeper_drill metadata
	DrillServerID string
	VolumeIDs     []string
	State         string
	Result        string
	Detail        string
	StartedAt     time.Time
	FinishedAt    time.Time
}

// Verification is the last drill of an image, as its row records it.
type Verification struct {
	At     time.Time
	Result string
	Detail string
}

// StartDrill writes the journal row of a drill before its server is asked for.
func (s *Store) StartDrill(ctx context.Context, d Drill) (Drill, error) {
	d.State, d.StartedAt = DrillBooting, s.now().UTC()
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `INSERT INTO drills (policy, server_id, image_row, image_id, token, state, started_at)
			VALUES (?, ?, ?, ?, ?, ?, ?)`, d.Policy, d.ServerID, d.ImageRow, d.ImageID, d.Token, d.State, fmtTime(d.StartedAt))
		if err != nil {
			return err
		}
		if d.ID, err = res.LastInsertId(); err != nil {
			return err
		}
		_, err = s.insertEvent(ctx, tx, Event{Kind: EventDrillStarted, Policy: d.Policy, ServerID: d.ServerID,
			ImageRow: d.ImageRow, ImageID: d.ImageID, Message: "restore drill " + d.Token + " started"})
		return err
	})
	if err != nil {
		return Drill{}, fmt.Errorf("start drill of image %s: %w", d.ImageID, err)
	}
	return d, nil
}

// SetDrillServer records the drill server's id and the volumes Nova gave it.
func (s *Store) SetDrillServer(ctx context.Context, id int64, serverID string, volumeIDs []string) error {
	if volumeIDs == nil {
		volumeIDs = []string{}
	}
	vols, _ := json.Marshal(volumeIDs)
	_, err := s.db.ExecContext(ctx, `UPDATE drills SET drill_server_id = ?, volume_ids = ? WHERE id = ?`, serverID, string(vols), id)
	if err != nil {
		return fmt.Errorf("record server of drill %d: %w", id, err)
	}
	return nil
}

// FinishDrill records a drill's result on its journal row (now cleaning) and on
// the image row (verified_at, verify_result, verify_detail), with its event.
func (s *Store) FinishDrill(ctx context.Context, d Drill, result, detail string) error {
	now := s.stamp()
	kind := EventDrillVerified
	msg := "restore drill " + d.Token + ": booted"
	if result != VerifyOK {
		kind, msg = EventDrillFailed, "restore drill "+d.Token+" "+result+": "+detail
	} else if detail != "" {
		msg += ": " + detail
	}
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `UPDATE drills SET state = ?, result = ?, detail = ? WHERE id = ?`,
			DrillCleaning, result, detail, d.ID); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE images SET verified_at = ?, verify_result = ?, verify_detail = ? WHERE id = ?`,
			now, result, detail, d.ImageRow); err != nil {
			return err
		}
		_, err := s.insertEvent(ctx, tx, Event{Kind: kind, Policy: d.Policy, ServerID: d.ServerID, ImageRow: d.ImageRow,
			ImageID: d.ImageID, Message: msg})
		return err
	})
	if err != nil {
		return fmt.Errorf("finish drill %d: %w", d.ID, err)
	}
	return nil
}

// MarkDrillCleaned marks a drill done: its server and volumes are gone. A drill that
// never got a result (a crash, a shutdown) is recorded interrupted on its journal
// row only: it says nothing about the image.
func (s *Store) MarkDrillCleaned(ctx context.Context, d Drill) error {
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `UPDATE drills SET state = ?, finished_at = ?,
			result = CASE result WHEN '' THEN 'interrupted' ELSE result END,
			detail = CASE result WHEN '' THEN 'interrupted before a result' ELSE detail END WHERE id = ?`,
			DrillDone, s.stamp(), d.ID); err != nil {
			return err
		}
		_, err := s.insertEvent(ctx, tx, Event{Kind: EventDrillCleaned, Policy: d.Policy, ServerID: d.ServerID,
			ImageRow: d.ImageRow, ImageID: d.ImageID, Message: "restore drill " + d.Token + ": drill server and volumes deleted"})
		return err
	})
	if err != nil {
		return fmt.Errorf("mark drill %d cleaned: %w", d.ID, err)
	}
	return nil
}

const drillColumns = `id, policy, server_id, image_row, image_id, token, drill_server_id, volume_ids, state, result, detail, started_at, finished_at`

func scanDrill(sc interface{ Scan(...any) error }) (Drill, error) {
	var d Drill
	var vols string
	var started, finished sql.NullString
	if err := sc.Scan(&d.ID, &d.Policy, &d.ServerID, &d.ImageRow, &d.ImageID, &d.Token, &d.DrillServerID, &vols,
		&d.State, &d.Result, &d.Detail, &started, &finished); err != nil {
		return Drill{}, err
	}
	if err := json.Unmarshal([]byte(vols), &d.VolumeIDs); err != nil {
		return Drill{}, fmt.Errorf("drill %d volume_ids: %w", d.ID, err)
	}
	var err error
	if d.StartedAt, err = parseTime(started); err != nil {
		return Drill{}, err
	}
	if d.FinishedAt, err = parseTime(finished); err != nil {
		return Drill{}, err
	}
	return d, nil
}

// OpenDrills returns the drills whose server or volumes may still exist (not
// done), oldest first.
func (s *Store) OpenDrills(ctx context.Context) ([]Drill, error) {
	return queryAll(ctx, s.reader(), "open drills", scanDrill, `SELECT `+drillColumns+` FROM drills WHERE state != 'done' ORDER BY id`)
}

// Drills returns every drill of the journal, oldest first.
func (s *Store) Drills(ctx context.Context) ([]Drill, error) {
	return queryAll(ctx, s.reader(), "drills", scanDrill, `SELECT `+drillColumns+` FROM drills ORDER BY id`)
}

// DrillByToken returns the journal row of a drill token: a server carrying our
// drill metadata is deleted only when its token is in the journal.
func (s *Store) DrillByToken(ctx context.Context, token string) (Drill, error) {
	return queryOne(ctx, s.reader(), "drill "+token, scanDrill, `SELECT `+drillColumns+` FROM drills WHERE token = ?`, token)
}

// LastDrilledServers returns, for a policy, when each server was last drilled
// (its newest journal row), so that drills rotate through the servers.
func (s *Store) LastDrilledServers(ctx context.Context, policy string) (map[string]time.Time, error) {
	rows, err := s.reader().QueryContext(ctx, `SELECT server_id, MAX(started_at) FROM drills WHERE policy = ? GROUP BY server_id`, policy)
	if err != nil {
		return nil, fmt.Errorf("last drills of policy %s: %w", policy, err)
	}
	defer rows.Close()
	out := map[string]time.Time{}
	for rows.Next() {
		var id string
		var at sql.NullString
		if err := rows.Scan(&id, &at); err != nil {
			return nil, fmt.Errorf("last drills of policy %s: %w", policy, err)
		}
		t, err := parseTime(at)
		if err != nil {
			return nil, err
		}
		out[id] = t
	}
	return out, rows.Err()
}

// Verification returns the last drill result recorded on an image row; a zero At
// when it was never drilled.
func (s *Store) Verification(ctx context.Context, row int64) (Verification, error) {
	var at sql.NullString
	var v Verification
	err := s.reader().QueryRowContext(ctx, `SELECT verified_at, verify_result, verify_detail FROM images WHERE id = ?`, row).
		Scan(&at, &v.Result, &v.Detail)
	if errors.Is(err, sql.ErrNoRows) {
		return Verification{}, fmt.Errorf("image row %d: %w", row, ErrNotFound)
	}
	if err != nil {
		return Verification{}, fmt.Errorf("verification of image row %d: %w", row, err)
	}
	if v.At, err = parseTime(at); err != nil {
		return Verification{}, err
	}
	return v, nil
}

// Verifications returns the last drill result of every drilled image row, by row.
func (s *Store) Verifications(ctx context.Context) (map[int64]Verification, error) {
	rows, err := s.reader().QueryContext(ctx, `SELECT id, verified_at, verify_result, verify_detail FROM images WHERE verified_at IS NOT NULL`)
	if err != nil {
		return nil, fmt.Errorf("verifications: %w", err)
	}
	defer rows.Close()
	out := map[int64]Verification{}
	for rows.Next() {
		var row int64
		var at sql.NullString
		var v Verification
		if err := rows.Scan(&row, &at, &v.Result, &v.Detail); err != nil {
			return nil, fmt.Errorf("verifications: %w", err)
		}
		if v.At, err = parseTime(at); err != nil {
			return nil, err
		}
		out[row] = v
	}
	return out, rows.Err()
}

// LastVerified returns, per policy, when its last successful drill finished and
// the result of its last drill ("" when none).
func (s *Store) LastVerified(ctx context.Context) (okAt map[string]time.Time, last map[string]string, err error) {
	okAt, last = map[string]time.Time{}, map[string]string{}
	rows, err := s.reader().QueryContext(ctx, `SELECT policy, result, started_at FROM drills WHERE result IN ('ok', 'failed', 'timeout') ORDER BY id`)
	if err != nil {
		return nil, nil, fmt.Errorf("last verified: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var p, r string
		var at sql.NullString
		if err := rows.Scan(&p, &r, &at); err != nil {
			return nil, nil, fmt.Errorf("last verified: %w", err)
		}
		t, err := parseTime(at)
		if err != nil {
			return nil, nil, err
		}
		last[p] = r
		if r == VerifyOK && t.After(okAt[p]) {
			okAt[p] = t
		}
	}
	return okAt, last, rows.Err()
}
