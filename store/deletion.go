package store

import (
	"cmp"
	"context"
	"database/sql"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Event kinds of the deletion journal and of reconcile.
const (
	EventImageDeleting      = "image_deleting"
	EventImageDeleteDefer   = "image_delete_deferred"
	EventImageProtected     = "image_kept_protected"
	EventImageReleased      = "image_protection_released"
	EventImageDeleted       = "image_deleted"
	EventImageGone          = "image_gone"
	EventSnapshotDeleteStep = "snapshot_delete"
	EventRetentionRefused   = "retention_refused"
)

// LineageRow is the part of a lineage row that retention planning and reconcile
// need. It is read without the metadata column, so that planning over a million
// rows stays cheap.
type LineageRow struct {
	Row           int64
	ImageID       string
	Name          string
	Policy        string
	ServerID      string
	ServerName    string
	VolumeBacked  bool
	Slot          time.Time
	Owner         string
	State         ImageState
	Reason        string
	DeleteReason  string
	RequestedAt   time.Time
	ActiveAt      time.Time
	FailedAt      time.Time
	NextAttemptAt time.Time
	// Failure and LateUntil are as in Image.
	Failure   Failure
	LateUntil time.Time
}

// Lineage returns the rows f selects, lean, ordered by policy, server, slot and row.
func (s *Store) Lineage(ctx context.Context, f ImageFilter) ([]LineageRow, error) {
	q, args := f.query(leanColumns)
	return s.scanLineage(ctx, nil, q, args...)
}

// scanLineage runs a lineage query. Policy and owner are the same on most rows:
// they are interned, so that a large result holds one copy of each.
func (s *Store) scanLineage(ctx context.Context, out []LineageRow, q string, args ...any) ([]LineageRow, error) {
	rows, err := s.reader().QueryContext(ctx, q, args...)
	if err != nil {
		return out, fmt.Errorf("list lineage: %w", err)
	}
	defer rows.Close()
	var imageID, slot, requested, active, failed, next, late sql.NullString
	var state, failure string
	intern := map[string]string{}
	in := func(s string) string {
		if v, ok := intern[s]; ok {
			return v
		}
		intern[s] = s
		return s
	}
	for rows.Next() {
		out = append(out, LineageRow{})
		r := &out[len(out)-1]
		if err := rows.Scan(&r.Row, &imageID, &r.Name, &r.Policy, &r.ServerID, &r.ServerName, &r.VolumeBacked, &slot,
			&r.Owner, &state, &r.Reason, &r.DeleteReason, &requested, &active, &failed, &next, &failure, &late); err != nil {
			return out[:len(out)-1], fmt.Errorf("scan lineage: %w", err)
		}
		r.ImageID, r.State, r.Failure = imageID.String, ImageState(in(state)), Failure(failure)
		r.Policy, r.Owner = in(r.Policy), in(r.Owner)
		if r.Slot, err = parseLean(slot); err == nil {
			if r.RequestedAt, err = parseLean(requested); err == nil {
				if r.ActiveAt, err = parseLean(active); err == nil {
					if r.FailedAt, err = parseLean(failed); err == nil {
						if r.NextAttemptAt, err = parseLean(next); err == nil {
							r.LateUntil, err = parseLean(late)
						}
					}
				}
			}
		}
		if err != nil {
			return out[:len(out)-1], fmt.Errorf("lineage row %d: %w", r.Row, err)
		}
	}
	if err := rows.Err(); err != nil {
		return out, fmt.Errorf("list lineage: %w", err)
	}
	return out, nil
}

// lineageServersQuery lists a policy's servers by skipping through the UNIQUE
// (policy, server_id, slot) index: one seek per server for the next server id
// above the last. DISTINCT walks every row of the policy instead (0.15 s for a
// million rows against 0.04 s).
const lineageServersQuery = `WITH RECURSIVE servers(id) AS (
		SELECT (SELECT min(server_id) FROM images WHERE policy = ?1)
		UNION ALL
		SELECT (SELECT min(server_id) FROM images WHERE policy = ?1 AND server_id > servers.id)
			FROM servers WHERE servers.id IS NOT NULL)
	SELECT id FROM servers WHERE id IS NOT NULL`

// LineageServers returns the distinct server ids with rows under policy, sorted. It
// reads only the (policy, server_id, slot) index, one seek per server.
func (s *Store) LineageServers(ctx context.Context, policy string) ([]string, error) {
	rows, err := s.reader().QueryContext(ctx, lineageServersQuery, policy)
	if err != nil {
		return nil, fmt.Errorf("list lineage servers: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("scan lineage server: %w", err)
		}
		out = append(out, id)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list lineage servers: %w", err)
	}
	return out, nil
}

// AppendLineage appends to dst the rows of policy for the given servers in the
// given states (all when none), ordered by server, newest slot first, and returns
// the extended slice. Callers page through a large lineage a few hundred servers at
// a time (see LineageServers), reusing dst, so that memory stays bounded and the one
// connection is free between pages.
func (s *Store) AppendLineage(ctx context.Context, dst []LineageRow, policy string, serverIDs []string, states []ImageState) ([]LineageRow, error) {
	if len(serverIDs) == 0 {
		return dst, nil
	}
	args := make([]any, 0, 1+len(serverIDs)+len(states))
	args = append(args, policy)
	q := strings.Builder{}
	q.WriteString(`SELECT id, image_id, name, policy, server_id, server_name, volume_backed, slot, owner, state, reason,
		delete_reason, requested_at, active_at, failed_at, next_attempt_at, failure, late_until FROM images WHERE policy = ? AND server_id IN (`)
	for i, id := range serverIDs {
		if i > 0 {
			q.WriteString(", ")
		}
		q.WriteString("?")
		args = append(args, id)
	}
	q.WriteString(")")
	if len(states) > 0 {
		q.WriteString(" AND state IN (")
		for i, st := range states {
			if i > 0 {
				q.WriteString(", ")
			}
			q.WriteString("?")
			args = append(args, string(st))
		}
		q.WriteString(")")
	}
	// The order of the UNIQUE (policy, server_id, slot) index: no sort step, and no
	// index of its own to keep up on every write. A server's rows are then reversed
	// to newest first (its slots are unique: no ties).
	q.WriteString(" ORDER BY policy, server_id, slot")
	first := len(dst)
	dst, err := s.scanLineage(ctx, dst, q.String(), args...)
	for lo := first; lo < len(dst); {
		hi := lo + 1
		for hi < len(dst) && dst[hi].ServerID == dst[lo].ServerID {
			hi++
		}
		slices.Reverse(dst[lo:hi])
		lo = hi
	}
	return dst, err
}

// parseLean is parseTime with a fast path for the stored fixed-width form, which is
// what every row written by imagekeeper holds.
func parseLean(ns sql.NullString) (time.Time, error) {
	if !ns.Valid || ns.String == "" {
		return time.Time{}, nil
	}
	if t, ok := parseFixed(ns.String); ok {
		return t, nil
	}
	return parseTime(ns)
}

// parseFixed parses "2006-01-02T15:04:05.000000000Z" by hand: a million rows parse
// in a fraction of time.Parse's cost.
func parseFixed(s string) (time.Time, bool) {
	if len(s) != len(timeFormat) || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':' ||
		s[19] != '.' || s[29] != 'Z' {
		return time.Time{}, false
	}
	num := func(from, to int) (int, bool) {
		n := 0
		for i := from; i < to; i++ {
			c := s[i]
			if c < '0' || c > '9' {
				return 0, false
			}
			n = n*10 + int(c-'0')
		}
		return n, true
	}
	var v [7]int
	for i, f := range [7][2]int{{0, 4}, {5, 7}, {8, 10}, {11, 13}, {14, 16}, {17, 19}, {20, 29}} {
		n, ok := num(f[0], f[1])
		if !ok {
			return time.Time{}, false
		}
		v[i] = n
	}
	if v[1] < 1 || v[1] > 12 || v[2] < 1 || v[2] > 31 || v[3] > 23 || v[4] > 59 || v[5] > 59 {
		return time.Time{}, false
	}
	t := time.Date(v[0], time.Month(v[1]), v[2], v[3], v[4], v[5], v[6], time.UTC)
	if t.Day() != v[2] { // Feb 30 and the like normalise into another month
		return time.Time{}, false
	}
	return t, true
}

// BeginDeletion is the journal's first step: a good or failed row becomes deleting,
// with the reason retention gave. Nothing has been asked of the cloud yet; a crash
// from here on resumes from this row.
func (s *Store) BeginDeletion(ctx context.Context, row int64, reason string) (Image, error) {
	if reason == "" {
		return Image{}, fmt.Errorf("begin deletion of image row %d: empty reason", row)
	}
	im, err := s.transition(ctx, row, []ImageState{ImageGood, ImageFailed},
		Event{Kind: EventImageDeleting, Message: "deleting: " + reason},
		`state = 'deleting', delete_reason = ?, deleting_at = ?, next_attempt_at = NULL, last_error = ''`,
		reason, s.stamp())
	if err != nil {
		return Image{}, fmt.Errorf("begin deletion of image row %d: %w", row, err)
	}
	return im, nil
}

// DeferDeletion records a step of a deleting row that did not complete (an error of
// the cloud, a snapshot in use, a snapshot still deleting), counts the attempt and
// says when to try again. The row stays deleting.
func (s *Store) DeferDeletion(ctx context.Context, row int64, why string, next time.Time) (Image, error) {
	im, err := s.transition(ctx, row, []ImageState{ImageDeleting},
		Event{Kind: EventImageDeleteDefer, Message: fmt.Sprintf("deletion deferred until %s: %s", next.UTC().Format(time.RFC3339), why)},
		`delete_attempts = delete_attempts + 1, last_error = ?, next_attempt_at = ?`, why, fmtTime(next))
	if err != nil {
		return Image{}, fmt.Errorf("defer deletion of image row %d: %w", row, err)
	}
	return im, nil
}

// KeepProtected records that Glance refused to delete the image because it is
// protected: the row becomes (or stays) kept_protected, the refusal goes to
// LastError (Reason keeps what it said, a failure reason for example), and next is
// when to look again, so that a pinned image is not retried every cycle.
func (s *Store) KeepProtected(ctx context.Context, row int64, reason string, next time.Time) (Image, error) {
	im, err := s.transition(ctx, row, []ImageState{ImageDeleting, ImageKeptProtected},
		Event{Kind: EventImageProtected, Message: fmt.Sprintf("kept, protected (next look %s): %s", next.UTC().Format(time.RFC3339), reason)},
		`state = 'kept_protected', delete_attempts = delete_attempts + 1, last_error = ?, next_attempt_at = ?`,
		reason, fmtTime(next))
	if err != nil {
		return Image{}, fmt.Errorf("keep protected image row %d: %w", row, err)
	}
	return im, nil
}

// ReleaseProtected returns a kept_protected row whose image is no longer protected
// to what it was before (good when it ever became active, failed otherwise), so that
// retention decides about it afresh.
func (s *Store) ReleaseProtected(ctx context.Context, row int64, message string) (Image, error) {
	im, err := s.transition(ctx, row, []ImageState{ImageKeptProtected}, Event{Kind: EventImageReleased, Message: message},
		`state = CASE WHEN active_at IS NOT NULL AND failed_at IS NULL THEN 'good' ELSE 'failed' END,
		next_attempt_at = NULL, last_error = ''`)
	if err != nil {
		return Image{}, fmt.Errorf("release protected image row %d: %w", row, err)
	}
	return im, nil
}

// MarkDeleted is the journal's last step: a deleting row becomes deleted. It refuses
// (ErrConflict) while any snapshot of the image is not confirmed deleted: a row is
// deleted only when the image and everything behind it are gone.
func (s *Store) MarkDeleted(ctx context.Context, row int64, message string) (Image, error) {
	allGone := snapshotsAllIn(ctx, row, SnapshotDeleted)
	im, err := s.transitionChecked(ctx, row, []ImageState{ImageDeleting}, allGone, Event{Kind: EventImageDeleted, Message: message},
		`state = 'deleted', deleted_at = ?, next_attempt_at = NULL, last_error = ''`, s.stamp())
	if err != nil {
		return Image{}, fmt.Errorf("mark image row %d deleted: %w", row, err)
	}
	return im, nil
}

// MarkGone records that reconcile found the image of a good or kept_protected row
// gone from the cloud (someone else deleted it). The row becomes failed with the
// reason, so that it no longer counts as a good backup (min_keep must not count a
// phantom) and the deletion journal can clean the snapshots behind it.
func (s *Store) MarkGone(ctx context.Context, row int64, reason string) (Image, error) {
	im, err := s.transition(ctx, row, []ImageState{ImageGood, ImageKeptProtected},
		Event{Kind: EventImageGone, Message: reason},
		`state = 'failed', reason = ?, failed_at = COALESCE(failed_at, ?), next_attempt_at = NULL`, reason, s.stamp())
	if err != nil {
		return Image{}, fmt.Errorf("mark image row %d gone: %w", row, err)
	}
	return im, nil
}

// SnapshotStep is one step of a snapshot's deletion.
type SnapshotStep struct {
	// State is the new state (deleting, deleted, kept_in_use, error_deleting); empty
	// keeps the current one.
	State SnapshotState
	// Reason explains the state (why it is kept, what Cinder said).
	Reason string
	// Attempt counts a delete request made in this step.
	Attempt bool
	// NextAttempt is when to try again; zero clears it.
	NextAttempt time.Time
}

// RecordSnapshotStep records a step of a snapshot's deletion. An event is written
// when the state changes, when a delete request was made, or when the reason
// changes, so that a snapshot polled every cycle does not flood the audit.
func (s *Store) RecordSnapshotStep(ctx context.Context, snapshotID string, st SnapshotStep) (Snapshot, error) {
	out, err := s.writeSnapshot(ctx, snapshotID, EventSnapshotDeleteStep, func(tx *sql.Tx, cur Snapshot) (string, error) {
		state := cur.State
		if st.State != "" {
			state = st.State
		}
		if cur.State == SnapshotDeleted && state != SnapshotDeleted {
			return "", fmt.Errorf("%w: snapshot %s is deleted", ErrConflict, snapshotID)
		}
		now := s.stamp()
		deletingAt, deletedAt := fmtTime(cur.DeletingAt), fmtTime(cur.DeletedAt)
		if state == SnapshotDeleting && cur.DeletingAt.IsZero() {
			deletingAt = now
		}
		if state == SnapshotDeleted && cur.DeletedAt.IsZero() {
			deletedAt = now
		}
		attempts := cur.DeleteAttempts
		if st.Attempt {
			attempts++
		}
		lastErr := cur.LastError
		if state == SnapshotKeptInUse || state == SnapshotErrorDeleting || (state == SnapshotDeleting && st.Reason != "") {
			lastErr = st.Reason
		}
		if state == SnapshotDeleted {
			lastErr = ""
		}
		if _, err := tx.ExecContext(ctx, `UPDATE snapshots SET state = ?, reason = ?, deleting_at = ?, deleted_at = ?,
				delete_attempts = ?, next_attempt_at = ?, last_error = ?, updated_at = ? WHERE id = ?`,
			string(state), st.Reason, deletingAt, deletedAt, attempts, fmtTime(st.NextAttempt), lastErr, now, cur.Row); err != nil {
			return "", err
		}
		if state == cur.State && !st.Attempt && st.Reason == cur.Reason {
			return "", nil
		}
		msg := fmt.Sprintf("volume snapshot %s: %s -> %s", snapshotID, cur.State, state)
		if st.Attempt {
			msg += " (delete requested)"
		}
		if st.Reason != "" {
			msg += ": " + st.Reason
		}
		return msg, nil
	})
	if err != nil {
		return Snapshot{}, fmt.Errorf("record deletion step of snapshot %s: %w", snapshotID, err)
	}
	return out, nil
}

// LineageSnapshot is a snapshot row with the identity and state of its image row,
// for reconcile.
type LineageSnapshot struct {
	Snapshot
	ImageID    string
	Policy     string
	ServerID   string
	ImageState ImageState
}

// LiveStates are the image states of rows that may still have something in the
// cloud: every state but deleted.
var LiveStates = []ImageState{ImageRequested, ImageCreating, ImageGood, ImageFailed, ImageDeleting, ImageKeptProtected}

// lookupBatch is how many ids one IN (...) lookup binds (SQLite allows 32766).
const lookupBatch = 500

// inMarks returns "?, ?, ..." for n parameters.
func inMarks(n int) string {
	return strings.TrimSuffix(strings.Repeat("?, ", n), ", ")
}

// LiveLineage returns the rows in a live state (every state but deleted), lean, in
// no particular order. It reads them through images_state: the deleted rows, which
// are most of an old lineage, are not read at all.
func (s *Store) LiveLineage(ctx context.Context) ([]LineageRow, error) {
	args := make([]any, len(LiveStates))
	for i, st := range LiveStates {
		args[i] = string(st)
	}
	return s.scanLineage(ctx, nil, liveLineageQuery, args...)
}

// liveLineageQuery is LiveLineage's query (store/plan_test.go explains it).
var liveLineageQuery = `SELECT ` + leanColumns + ` FROM images WHERE state IN (` + inMarks(len(LiveStates)) + `)`

// leanColumns are the columns of a LineageRow, in scanLineage's order.
const leanColumns = `id, image_id, name, policy, server_id, server_name, volume_backed, slot, owner, state, reason,
	delete_reason, requested_at, active_at, failed_at, next_attempt_at, failure, late_until`

// LineageByImageIDs returns the rows (in any state) of the given Glance image ids
// that the lineage has, looked up on the image_id index a batch at a time.
func (s *Store) LineageByImageIDs(ctx context.Context, imageIDs []string) ([]LineageRow, error) {
	var out []LineageRow
	var err error
	for b := 0; b < len(imageIDs); b += lookupBatch {
		batch := imageIDs[b:min(b+lookupBatch, len(imageIDs))]
		args := make([]any, len(batch))
		for i, id := range batch {
			args[i] = id
		}
		if out, err = s.scanLineage(ctx, out, `SELECT `+leanColumns+` FROM images WHERE image_id IN (`+inMarks(len(batch))+`)`, args...); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// LineageSnapshotsByID returns the snapshot rows, with their image, of the given
// Cinder snapshot ids that the lineage has, looked up on the snapshot_id index a
// batch at a time: reconcile asks about what the cloud holds, not about every
// snapshot ever recorded.
func (s *Store) LineageSnapshotsByID(ctx context.Context, snapshotIDs []string) ([]LineageSnapshot, error) {
	var out []LineageSnapshot
	for b := 0; b < len(snapshotIDs); b += lookupBatch {
		batch := snapshotIDs[b:min(b+lookupBatch, len(snapshotIDs))]
		args := make([]any, len(batch))
		for i, id := range batch {
			args[i] = id
		}
		got, err := s.lineageSnapshots(ctx, "WHERE s.snapshot_id IN ("+inMarks(len(batch))+")", args...)
		if err != nil {
			return nil, err
		}
		out = append(out, got...)
	}
	slices.SortFunc(out, func(a, b LineageSnapshot) int { return cmp.Compare(a.Row, b.Row) })
	return out, nil
}

// LineageSnapshots returns every snapshot row with its image; deleted ones only when
// includeDeleted (reconcile looks for snapshots recorded deleted that are still in
// the cloud).
func (s *Store) LineageSnapshots(ctx context.Context, includeDeleted bool) ([]LineageSnapshot, error) {
	where := "WHERE s.state <> 'deleted'"
	if includeDeleted {
		where = ""
	}
	return s.lineageSnapshots(ctx, where)
}

func (s *Store) lineageSnapshots(ctx context.Context, where string, args ...any) ([]LineageSnapshot, error) {
	rows, err := s.reader().QueryContext(ctx, `SELECT s.id, s.snapshot_id, s.image_row, s.state, COALESCE(i.image_id, ''),
			i.policy, i.server_id, i.state
		FROM snapshots s JOIN images i ON i.id = s.image_row `+where+` ORDER BY s.id`, args...)
	if err != nil {
		return nil, fmt.Errorf("list lineage snapshots: %w", err)
	}
	defer rows.Close()
	var out []LineageSnapshot
	for rows.Next() {
		var ls LineageSnapshot
		var st, ist string
		if err := rows.Scan(&ls.Row, &ls.SnapshotID, &ls.ImageRow, &st, &ls.ImageID, &ls.Policy, &ls.ServerID, &ist); err != nil {
			return nil, fmt.Errorf("scan lineage snapshot: %w", err)
		}
		ls.State, ls.ImageState = SnapshotState(st), ImageState(ist)
		out = append(out, ls)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list lineage snapshots: %w", err)
	}
	return out, nil
}
