package store

import (
	"cmp"
	"context"
	"database/sql"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Retention planning reads every row of a policy but the deleted ones, a million
// at scale, nearly all of them plain good rows: state good, no reason, no failure.
// Of a plain good row retention needs the row id, the slot and the owner; of any
// other row, every field it decides on. Two partial indexes (migration 0009) hold
// the two kinds apart, so that no query compares columns per row to tell them
// apart, and each kind has its own query:
//
// retentionGoodQuery aggregates the ids and slots of the plain good rows per server
// and owner (comma-separated; neither holds a comma). group_concat of a bare column
// appends to one growing buffer; a || concatenation per row is what SQLite spent
// its time on before.
//
// retentionOtherQuery packs each other row into one record, and a server's records
// into one string. Each record is
//
//	id,state,slot,requested_at,failed_at,next_attempt_at,late_until,failure,image_id,owner,len,why
//
// where owner is empty when it is this installation's (?1), why is the delete
// reason of a deleting row and the reason of any other, and len is why's length in
// bytes: why comes last and is cut by length, so it may hold anything. Every other
// field is an enum, a fixed-width timestamp, an id or hex: no commas.
//
// The indexes are named: a partial index is used only when the query's WHERE
// repeats its condition, and the planner, without statistics, might take another.
// Which order the aggregates see the rows in is not relied on: each server's rows
// are sorted in Go, where they almost always arrive sorted.
func retentionGoodQuery(servers int) string {
	return `SELECT server_id, owner, group_concat(id), group_concat(slot)
		FROM images INDEXED BY images_retention_good
		WHERE policy = ? AND server_id IN (` + inMarks(servers) + `) AND state = 'good' AND reason = '' AND failure = ''
		GROUP BY server_id, owner ORDER BY server_id, owner`
}

func retentionOtherQuery(servers int) string {
	return `SELECT server_id, group_concat(id || ',' || state || ',' || slot || ',' || requested_at || ',' ||
			ifnull(failed_at, '') || ',' || ifnull(next_attempt_at, '') || ',' || ifnull(late_until, '') || ',' ||
			failure || ',' || ifnull(image_id, '') || ',' ||
			iif(owner = ?1, '', owner) || ',' || length(CAST(why AS BLOB)) || ',' || why, '')
		FROM (SELECT id, server_id, state, slot, requested_at, failed_at, next_attempt_at, late_until, failure, image_id, owner,
				CASE state WHEN 'deleting' THEN delete_reason ELSE reason END AS why
			FROM images INDEXED BY images_retention_other
			WHERE policy = ?2 AND server_id IN (` + inMarks(servers) + `)
				AND state <> 'deleted' AND (state <> 'good' OR reason <> '' OR failure <> ''))
		GROUP BY server_id ORDER BY server_id`
}

// AppendRetentionRows appends to dst the rows of policy for the given servers in
// every state but deleted, ordered by server, newest slot first (then by row id),
// like AppendLineage; but it fills only what retention decides on. A plain good
// row (no reason, no failure) has Row, Policy, ServerID, Slot, Owner and State; any
// other row also has ImageID, Reason (the failure's), DeleteReason (a deleting
// row's), RequestedAt, FailedAt, NextAttemptAt, LateUntil and Failure. Name,
// ServerName, VolumeBacked and ActiveAt stay zero, and so does a plain good row's
// ImageID: a caller that shows or deletes rows reads them in full for the few it
// shows (LineageRows).
func (s *Store) AppendRetentionRows(ctx context.Context, dst []LineageRow, policy string, serverIDs []string) ([]LineageRow, error) {
	if len(serverIDs) == 0 {
		return dst, nil
	}
	u := unpacker{s: s, policy: policy, stateOf: map[string]ImageState{}, slots: map[string]time.Time{}}
	for _, st := range ImageStates {
		u.stateOf[string(st)] = st
	}
	args := make([]any, 0, 2+len(serverIDs))
	args = append(args, s.owner, policy)
	for _, id := range serverIDs {
		args = append(args, id)
	}
	// Both queries read one snapshot of the lineage: between two autocommit reads a
	// row can change kind (a late image promoted from failed to good, a wait's
	// creating row marked good) and would be read twice, once of each kind, or not
	// at all.
	tx, err := s.reader().BeginTx(ctx, nil)
	if err != nil {
		return dst, fmt.Errorf("list retention rows of %s: %w", policy, err)
	}
	defer tx.Rollback() // read only: nothing to keep
	// The other rows first: few, held per server until that server's good rows.
	var others []serverRecords
	err = queryRows(ctx, tx, retentionOtherQuery(len(serverIDs)), args, func(rows *sql.Rows) error {
		var sr serverRecords
		if err := rows.Scan(&sr.server, &sr.records); err != nil {
			return err
		}
		others = append(others, sr)
		return nil
	})
	if err != nil {
		return dst, fmt.Errorf("list retention rows of %s: %w", policy, err)
	}
	cur, first := "", len(dst)
	// next ends the current server and appends the servers with other rows only
	// that sort before server ("" for all that are left).
	next := func(server string) error {
		if cur != "" {
			dst = u.finish(dst, first)
		}
		for len(others) > 0 && (server == "" || others[0].server < server) {
			first = len(dst)
			if err := u.startServer(others[0].records, others[0].server); err != nil {
				return fmt.Errorf("retention rows of %s, server %s: %w", policy, others[0].server, err)
			}
			others = others[1:]
			dst = u.finish(dst, first)
		}
		cur, first = server, len(dst)
		if server != "" && len(others) > 0 && others[0].server == server {
			if err := u.startServer(others[0].records, server); err != nil {
				return fmt.Errorf("retention rows of %s, server %s: %w", policy, server, err)
			}
			others = others[1:]
		}
		return nil
	}
	if betweenRetentionQueries != nil {
		betweenRetentionQueries()
	}
	err = queryRows(ctx, tx, retentionGoodQuery(len(serverIDs)), args[1:], func(rows *sql.Rows) error {
		var server, owner, ids, slots string
		if err := rows.Scan(&server, &owner, &ids, &slots); err != nil {
			return err
		}
		if server != cur {
			if err := next(server); err != nil {
				return err
			}
		}
		var err error
		if dst, err = u.good(dst, server, owner, ids, slots); err != nil {
			return fmt.Errorf("retention rows of %s, server %s: %w", policy, server, err)
		}
		return nil
	})
	if err == nil {
		err = next("")
	}
	if err != nil {
		return dst, fmt.Errorf("list retention rows of %s: %w", policy, err)
	}
	return dst, nil
}

// betweenRetentionQueries, when set (by tests), runs between AppendRetentionRows'
// two queries: where a concurrent write would fall.
var betweenRetentionQueries func()

// queryRows runs q in tx and calls each for every row.
func queryRows(ctx context.Context, tx *sql.Tx, q string, args []any, each func(*sql.Rows) error) error {
	rows, err := tx.QueryContext(ctx, q, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		if err := each(rows); err != nil {
			return err
		}
	}
	return rows.Err()
}

// serverRecords is one server's packed other rows (retentionOtherQuery).
type serverRecords struct {
	server, records string
}

// unpacker parses the retention queries' results. Strings are slices of the
// scanned ones (no copies); the states and this installation's owner are the
// shared constants.
type unpacker struct {
	s       *Store
	policy  string
	stateOf map[string]ImageState
	// slots caches parsed slot instants: a policy's servers share its slots.
	slots map[string]time.Time
	// recs[next:] are the current server's other rows not yet appended, newest
	// first (an index, not recs = recs[1:], so that the buffer's capacity serves
	// every server of the batch).
	recs []LineageRow
	next int
}

// nextField cuts the text before the next comma of *list (or all of it).
func nextField(list *string) string {
	v := *list
	if j := strings.IndexByte(v, ','); j >= 0 {
		*list = v[j+1:]
		return v[:j]
	}
	*list = ""
	return v
}

// newestFirst is the order of a server's rows: newest slot first, then by row id.
func newestFirst(a, b LineageRow) int {
	if c := b.Slot.Compare(a.Slot); c != 0 {
		return c
	}
	return cmp.Compare(a.Row, b.Row)
}

// sortsBefore reports whether r comes before the row (slot, id) in newestFirst order.
func sortsBefore(r *LineageRow, slot time.Time, id int64) bool {
	if c := slot.Compare(r.Slot); c != 0 {
		return c < 0
	}
	return r.Row < id
}

// startServer parses a server's packed other rows into u.recs, newest first.
func (u *unpacker) startServer(records, server string) error {
	u.recs, u.next = u.recs[:0], 0
	for records != "" {
		var rec LineageRow
		var err error
		if rec, records, err = u.record(records, server); err != nil {
			return err
		}
		u.recs = append(u.recs, rec)
	}
	if !slices.IsSortedFunc(u.recs, newestFirst) {
		slices.SortFunc(u.recs, newestFirst)
	}
	return nil
}

// good appends one owner's plain good rows of a server, each after the server's
// other rows that are newer.
func (u *unpacker) good(dst []LineageRow, server, owner, ids, slots string) ([]LineageRow, error) {
	if owner == u.s.owner {
		owner = u.s.owner // the shared string, not a copy per server
	}
	for ids != "" {
		id, err := strconv.ParseInt(nextField(&ids), 10, 64)
		if err != nil {
			return dst, fmt.Errorf("bad row id: %w", err)
		}
		slot := nextField(&slots)
		t, ok := u.slots[slot]
		if !ok {
			if t, err = packedTime(slot); err != nil {
				return dst, fmt.Errorf("row %d: %w", id, err)
			}
			u.slots[slot] = t
		}
		for u.next < len(u.recs) && sortsBefore(&u.recs[u.next], t, id) {
			dst = append(dst, u.recs[u.next])
			u.next++
		}
		// Filled in place: a 320-byte row built aside and copied in cost more than
		// the fields it has.
		dst = append(dst, LineageRow{})
		r := &dst[len(dst)-1]
		r.Row, r.Policy, r.ServerID, r.Owner, r.State, r.Slot = id, u.policy, server, owner, ImageGood, t
	}
	if slots != "" {
		return dst, fmt.Errorf("%d more slots than row ids", strings.Count(slots, ",")+1)
	}
	return dst, nil
}

// finish appends the current server's other rows left and makes sure the server's
// rows (from first on) are newest first: they are, unless the server has good rows
// of more than one owner.
func (u *unpacker) finish(dst []LineageRow, first int) []LineageRow {
	dst = append(dst, u.recs[u.next:]...)
	u.recs, u.next = u.recs[:0], 0
	if rs := dst[first:]; !slices.IsSortedFunc(rs, newestFirst) {
		slices.SortFunc(rs, newestFirst)
	}
	return dst
}

// record parses the first packed record of records and returns the rest.
func (u *unpacker) record(packed, server string) (LineageRow, string, error) {
	var f [11]string
	for i := range f {
		j := strings.IndexByte(packed, ',')
		if j < 0 {
			return LineageRow{}, "", fmt.Errorf("truncated record %q", packed)
		}
		f[i], packed = packed[:j], packed[j+1:]
	}
	id, err := strconv.ParseInt(f[0], 10, 64)
	if err != nil {
		return LineageRow{}, "", fmt.Errorf("bad row id %q", f[0])
	}
	n, err := strconv.Atoi(f[10])
	if err != nil || n < 0 || n > len(packed) {
		return LineageRow{}, "", fmt.Errorf("row %d: bad reason length %q", id, f[10])
	}
	why := packed[:n]
	packed = packed[n:]
	st, ok := u.stateOf[f[1]]
	if !ok {
		return LineageRow{}, "", fmt.Errorf("row %d: unknown state %q", id, f[1])
	}
	r := LineageRow{Row: id, ImageID: f[8], Policy: u.policy, ServerID: server, Owner: u.s.owner, State: st, Failure: Failure(f[7])}
	if f[9] != "" {
		r.Owner = f[9]
	}
	if st == ImageDeleting {
		r.DeleteReason = why
	} else {
		r.Reason = why
	}
	if r.Slot, err = packedTime(f[2]); err == nil {
		if r.RequestedAt, err = packedTime(f[3]); err == nil {
			if r.FailedAt, err = packedTime(f[4]); err == nil {
				if r.NextAttemptAt, err = packedTime(f[5]); err == nil {
					r.LateUntil, err = packedTime(f[6])
				}
			}
		}
	}
	if err != nil {
		return LineageRow{}, "", fmt.Errorf("row %d: %w", id, err)
	}
	return r, packed, nil
}

// packedTime parses a timestamp of a packed record; "" is the zero time.
func packedTime(v string) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	if t, ok := parseFixed(v); ok {
		return t, nil
	}
	return parseTime(sql.NullString{String: v, Valid: true})
}

// LineageRows returns the rows with the given row ids (lean, all columns of a
// LineageRow), in row order, a batch at a time.
func (s *Store) LineageRows(ctx context.Context, rowIDs []int64) ([]LineageRow, error) {
	var out []LineageRow
	var err error
	for b := 0; b < len(rowIDs); b += lookupBatch {
		batch := rowIDs[b:min(b+lookupBatch, len(rowIDs))]
		args := make([]any, len(batch))
		for i, id := range batch {
			args[i] = id
		}
		if out, err = s.scanLineage(ctx, out, `SELECT `+leanColumns+` FROM images WHERE id IN (`+inMarks(len(batch))+`) ORDER BY id`, args...); err != nil {
			return nil, err
		}
	}
	return out, nil
}
