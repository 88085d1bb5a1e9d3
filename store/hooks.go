package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"time"
)

// Hook journal states.
const (
	// HookOpen: the pre hook is running or has succeeded; a post is owed.
	HookOpen = "open"
	// HookDone: the post ran, or pre failed and no post is owed.
	HookDone = "done"
)

// Event kinds of application-consistency hooks.
const (
	EventHookRan    = "hook_ran"
	EventHookFailed = "hook_failed"
)

// HookRun is one row of the hook journal: a pre hook that may have frozen an
// application, and the post hook that thaws it, as rendered when pre ran.
type HookRun struct {
	ID          int64
	Policy      string
	ServerID    string
	ServerName  string
	Slot        time.Time
	ImageRow    int64
	PostArgv    []string
	PostEnv     map[string]string
	PostTimeout time.Duration
	State       string
	Result      string
	StartedAt   time.Time
	FinishedAt  time.Time
}

// StartHook writes an open journal row before the pre hook runs.
func (s *Store) StartHook(ctx context.Context, h HookRun) (HookRun, error) {
	h.State, h.StartedAt = HookOpen, s.now().UTC()
	argv, err := json.Marshal(h.PostArgv)
	if err != nil {
		return h, fmt.Errorf("start hook: encode argv: %w", err)
	}
	env, err := json.Marshal(h.PostEnv)
	if err != nil {
		return h, fmt.Errorf("start hook: encode env: %w", err)
	}
	err = s.inTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `INSERT INTO hook_runs (policy, server_id, server_name, slot, image_row,
			post_argv, post_env, post_timeout_ms, state, started_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			h.Policy, h.ServerID, h.ServerName, h.Slot.UTC().Format(timeFormat), h.ImageRow, string(argv), string(env),
			h.PostTimeout.Milliseconds(), h.State, fmtTime(h.StartedAt))
		if err != nil {
			return err
		}
		h.ID, err = res.LastInsertId()
		return err
	})
	if err != nil {
		return h, fmt.Errorf("start hook of server %s: %w", h.ServerID, err)
	}
	return h, nil
}

// FinishHook closes a journal row with its result (the post's, or why no post is owed).
func (s *Store) FinishHook(ctx context.Context, id int64, result string) error {
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `UPDATE hook_runs SET state = ?, result = ?, finished_at = ? WHERE id = ?`,
			HookDone, result, fmtTime(s.now().UTC()), id)
		return err
	})
	if err != nil {
		return fmt.Errorf("finish hook run %d: %w", id, err)
	}
	return nil
}

// OpenHooks returns the journal rows whose post is still owed, oldest first.
func (s *Store) OpenHooks(ctx context.Context) ([]HookRun, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, policy, server_id, server_name, slot, image_row, post_argv, post_env,
		post_timeout_ms, state, result, started_at FROM hook_runs WHERE state != ? ORDER BY id`, HookDone)
	if err != nil {
		return nil, fmt.Errorf("open hook runs: %w", err)
	}
	defer rows.Close()
	var out []HookRun
	for rows.Next() {
		var h HookRun
		var slot, argv, env string
		var ms int64
		var started sql.NullString
		if err := rows.Scan(&h.ID, &h.Policy, &h.ServerID, &h.ServerName, &slot, &h.ImageRow, &argv, &env, &ms,
			&h.State, &h.Result, &started); err != nil {
			return nil, fmt.Errorf("open hook runs: %w", err)
		}
		if h.Slot, err = time.Parse(timeFormat, slot); err != nil {
			return nil, fmt.Errorf("hook run %d: slot: %w", h.ID, err)
		}
		if err := json.Unmarshal([]byte(argv), &h.PostArgv); err != nil {
			return nil, fmt.Errorf("hook run %d: decode argv: %w", h.ID, err)
		}
		if err := json.Unmarshal([]byte(env), &h.PostEnv); err != nil {
			return nil, fmt.Errorf("hook run %d: decode env: %w", h.ID, err)
		}
		h.PostTimeout = time.Duration(ms) * time.Millisecond
		if h.StartedAt, err = parseTime(started); err != nil {
			return nil, fmt.Errorf("hook run %d: %w", h.ID, err)
		}
		out = append(out, h)
	}
	return out, rows.Err()
}

// HookRuns returns every journal row of a policy (all policies when ""), oldest
// first: the soak checks with it that every successful pre has exactly one post.
func (s *Store) HookRuns(ctx context.Context, policy string) ([]HookRun, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, server_id, state, result FROM hook_runs
		WHERE ? = '' OR policy = ? ORDER BY id`, policy, policy)
	if err != nil {
		return nil, fmt.Errorf("hook runs: %w", err)
	}
	defer rows.Close()
	var out []HookRun
	for rows.Next() {
		h := HookRun{Policy: policy}
		if err := rows.Scan(&h.ID, &h.ServerID, &h.State, &h.Result); err != nil {
			return nil, fmt.Errorf("hook runs: %w", err)
		}
		out = append(out, h)
	}
	return out, rows.Err()
}

// SetConsistency records on an image row how consistent its image turned out to be
// (the imagekeeper_consistency value of its metadata), with an event saying why.
func (s *Store) SetConsistency(ctx context.Context, row int64, value, why string) error {
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		var meta string
		var policy, serverID string
		var imageID sql.NullString
		if err := tx.QueryRowContext(ctx, `SELECT metadata, policy, server_id, image_id FROM images WHERE id = ?`, row).
			Scan(&meta, &policy, &serverID, &imageID); err != nil {
			return err
		}
		m := map[string]string{}
		if meta != "" {
			if err := json.Unmarshal([]byte(meta), &m); err != nil {
				return fmt.Errorf("decode metadata: %w", err)
			}
		}
		m[consistencyKey] = value
		b, err := json.Marshal(m)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE images SET metadata = ? WHERE id = ?`, string(b), row); err != nil {
			return err
		}
		_, err = s.insertEvent(ctx, tx, Event{Kind: EventImageNote, Policy: policy, ServerID: serverID, ImageRow: row,
			ImageID: imageID.String, Message: why})
		return err
	})
	if err != nil {
		return fmt.Errorf("set consistency of image row %d: %w", row, err)
	}
	return nil
}

// consistencyKey is cloud.StampConsistency (the store does not import cloud).
const consistencyKey = "imagekeeper_consistency"
