package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// The queries in this file feed the store-derived gauges (scheduler.Metrics.Refresh).
// They run every refresh, so each one uses an index and reads no more than a
// policy's live rows: never a scan of the ever-growing events table.

// countImagesOfPolicy counts one policy's rows by state from images_policy_state
// alone (a covering index scan of that policy's range, not of the lineage).
const countImagesOfPolicy = `SELECT state, COUNT(*) FROM images WHERE policy = ? GROUP BY state`

// ImageCountsOfPolicy returns how many images the policy has in each state, leaving
// out deleted images (they are history, not inventory). It reads only the policy's
// part of an index, so the gauges of one policy cost the same whatever the size of
// the other policies' lineage.
func (s *Store) ImageCountsOfPolicy(ctx context.Context, policy string) (map[ImageState]int, error) {
	rows, err := s.reader().QueryContext(ctx, countImagesOfPolicy, policy)
	if err != nil {
		return nil, fmt.Errorf("count images of %s by state: %w", policy, err)
	}
	defer rows.Close()
	out := map[ImageState]int{}
	for rows.Next() {
		var state string
		var n int
		if err := rows.Scan(&state, &n); err != nil {
			return nil, fmt.Errorf("count images of %s by state: %w", policy, err)
		}
		if ImageState(state) != ImageDeleted {
			out[ImageState(state)] = n
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("count images of %s by state: %w", policy, err)
	}
	return out, nil
}

// countLeftoverSnapshots names every state but deleted and missing, rather than
// saying NOT IN: that way it reads only the snapshots_state ranges of snapshots
// still in the cloud, not every snapshot ever recorded.
const countLeftoverSnapshots = `SELECT COUNT(*) FROM snapshots sn
	WHERE sn.state IN ('deleting', 'kept_in_use', 'error_deleting')
	   OR (sn.state IN ('creating', 'available', 'error')
	       AND EXISTS (SELECT 1 FROM images i WHERE i.id = sn.image_row AND i.state = 'deleted'))`

// LeftoverSnapshotCount returns how many volume snapshots are still in the cloud
// although their image is gone: snapshots the deletion journal is deleting, had to
// keep because a volume depends on them, or failed to delete, and live snapshots
// of an image already marked deleted. The journal deletes snapshots only after it
// confirmed the image gone, so a snapshot in a deletion state implies that.
func (s *Store) LeftoverSnapshotCount(ctx context.Context) (int, error) {
	var n int
	err := s.reader().QueryRowContext(ctx, countLeftoverSnapshots).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("count leftover snapshots: %w", err)
	}
	return n, nil
}

// ServerRecoveryPoint is one live server of a policy and its newest good image.
type ServerRecoveryPoint struct {
	ServerID string
	// NewestGood is when the server's newest good image of the policy was requested
	// (the moment it captures); zero if the server has no good image.
	NewestGood time.Time
}

// newestGoodPerServer finds the slot's servers on images_slot_id (a slot id names one
// policy's slot) and on events_policy_at (events have no index on slot_id; the
// policy and the slot's start narrow them), and each one's newest good image on the
// partial index images_good_server, without reading the server's other rows.
const newestGoodPerServer = `WITH live AS (
		SELECT server_id FROM images WHERE slot_id = ?
		UNION
		SELECT server_id FROM events WHERE policy = ? AND at >= ? AND slot_id = ? AND server_id <> ''
			AND kind <> '` + EventServerLeft + `'
	)
	SELECT live.server_id,
		(SELECT MAX(i.requested_at) FROM images i
		 WHERE i.policy = ? AND i.server_id = live.server_id AND i.state = 'good')
	FROM live ORDER BY live.server_id`

// NewestGoodPerServer returns, for each live server of the policy, when its newest
// good image was requested. The live servers are those the policy's latest
// completed slot selected: servers with an image row for that slot, and servers the
// slot recorded an event about without making an image (skipped in ERROR, busy, an
// intent dropped). A slot that failed before it selected anything (a failed
// listing) does not count, so the previous slot's servers stay live. A policy with
// no completed slot has no live servers.
func (s *Store) NewestGoodPerServer(ctx context.Context, policy string) ([]ServerRecoveryPoint, error) {
	var slotID int64
	var started sql.NullString
	err := s.reader().QueryRowContext(ctx, `SELECT id, started_at FROM slots
		WHERE policy = ? AND (outcome IN ('ran', 'caught_up') OR (outcome = 'failed' AND selected > 0))
		ORDER BY slot DESC LIMIT 1`, policy).Scan(&slotID, &started)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("newest good image per server of %s: latest slot: %w", policy, err)
	}
	since := started.String
	if !started.Valid {
		since = ""
	}
	rows, err := s.reader().QueryContext(ctx, newestGoodPerServer, slotID, policy, since, slotID, policy)
	if err != nil {
		return nil, fmt.Errorf("newest good image per server of %s: %w", policy, err)
	}
	defer rows.Close()
	var out []ServerRecoveryPoint
	for rows.Next() {
		var rp ServerRecoveryPoint
		var newest sql.NullString
		if err := rows.Scan(&rp.ServerID, &newest); err != nil {
			return nil, fmt.Errorf("newest good image per server of %s: %w", policy, err)
		}
		if rp.NewestGood, err = parseTime(newest); err != nil {
			return nil, fmt.Errorf("newest good image per server of %s: %w", policy, err)
		}
		out = append(out, rp)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("newest good image per server of %s: %w", policy, err)
	}
	return out, nil
}

// LastSuccessfulSlots returns, per policy, when its latest successful slot run
// finished, so that a restarted daemon reports the last success before its first
// run. Successful means what the backup run means by it (scheduler.SlotReport.OK):
// outcome ran or caught_up, and every selected server imaged good or skipped for a
// recorded reason.
func (s *Store) LastSuccessfulSlots(ctx context.Context) (map[string]time.Time, error) {
	rows, err := s.reader().QueryContext(ctx, `SELECT policy, MAX(finished_at) FROM slots
		WHERE outcome IN ('ran', 'caught_up') AND finished_at IS NOT NULL AND failed = 0 AND good + skipped = selected
		GROUP BY policy`)
	if err != nil {
		return nil, fmt.Errorf("last successful slots: %w", err)
	}
	defer rows.Close()
	out := map[string]time.Time{}
	for rows.Next() {
		var policy string
		var finished sql.NullString
		if err := rows.Scan(&policy, &finished); err != nil {
			return nil, fmt.Errorf("last successful slots: %w", err)
		}
		t, err := parseTime(finished)
		if err != nil {
			return nil, fmt.Errorf("last successful slots: %w", err)
		}
		out[policy] = t
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("last successful slots: %w", err)
	}
	return out, nil
}

// EmptySince returns when the policy's current run of empty slots began: the
// earliest slot with outcome empty after the newest slot that selected a server.
// It is zero when the newest such slot is not followed by an empty one (or the
// policy never had an empty slot). Failed, missed and running slots say nothing
// about the selection and neither end nor start the run.
func (s *Store) EmptySince(ctx context.Context, policy string) (time.Time, error) {
	var first sql.NullString
	err := s.db.QueryRowContext(ctx, `SELECT MIN(slot) FROM slots
		WHERE policy = ? AND outcome = 'empty' AND slot > COALESCE((SELECT MAX(slot) FROM slots
			WHERE policy = ? AND selected > 0 AND outcome IN ('ran', 'caught_up', 'failed')), '')`,
		policy, policy).Scan(&first)
	if err != nil {
		return time.Time{}, fmt.Errorf("empty selection of %s: %w", policy, err)
	}
	t, err := parseTime(first)
	if err != nil {
		return time.Time{}, fmt.Errorf("empty selection of %s: %w", policy, err)
	}
	return t, nil
}
