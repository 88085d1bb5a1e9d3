package store

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// retentionRowsQuery reads, per server, one packed text of every row retention
// decides on, newest first: a few cgo calls per server instead of sixteen columns
// per row, which is what go-sqlite3 spends its time on over a million rows. Each
// record is
//
//	id,state,slot,requested_at,failed_at,next_attempt_at,late_until,failure,image_id,owner,len,why
//
// where owner is empty when it is this installation's (the first parameter), why is
// the delete reason of a deleting row and the reason of any other, and len is why's
// length in bytes: why comes last and is cut by length, so it may hold anything.
// Every other field is an enum, a fixed-width timestamp, an id or hex: no commas.
func retentionRowsQuery(servers, states int) string {
	q := `SELECT server_id, group_concat(id || ',' || state || ',' || slot || ',' || requested_at || ',' ||
			ifnull(failed_at, '') || ',' || ifnull(next_attempt_at, '') || ',' || ifnull(late_until, '') || ',' ||
			failure || ',' || ifnull(image_id, '') || ',' ||
			iif(owner = ?, '', owner) || ',' || length(CAST(why AS BLOB)) || ',' || why, '' ORDER BY slot DESC, id)
		FROM (SELECT id, server_id, state, slot, requested_at, failed_at, next_attempt_at, late_until, failure, image_id, owner,
				CASE state WHEN 'deleting' THEN delete_reason ELSE reason END AS why
			FROM images WHERE policy = ? AND server_id IN (` + inMarks(servers) + `)`
	if states > 0 {
		q += ` AND state IN (` + inMarks(states) + `)`
	}
	return q + `) GROUP BY server_id ORDER BY server_id`
}

// AppendRetentionRows appends to dst the rows of policy for the given servers in
// the given states (all when none), ordered by server, newest slot first, like
// AppendLineage; but it fills only what retention decides on and the deletion
// journal needs: Row, ImageID, Policy, ServerID, Slot, Owner, State, Reason (the
// failure's), DeleteReason (a deleting row's), RequestedAt, FailedAt,
// NextAttemptAt, LateUntil and Failure. Name, ServerName, VolumeBacked and ActiveAt stay zero: a caller
// that shows rows reads those for the few it shows (LineageRows).
func (s *Store) AppendRetentionRows(ctx context.Context, dst []LineageRow, policy string, serverIDs []string, states []ImageState) ([]LineageRow, error) {
	if len(serverIDs) == 0 {
		return dst, nil
	}
	args := make([]any, 0, 2+len(serverIDs)+len(states))
	args = append(args, s.owner, policy)
	for _, id := range serverIDs {
		args = append(args, id)
	}
	for _, st := range states {
		args = append(args, string(st))
	}
	rows, err := s.reader().QueryContext(ctx, retentionRowsQuery(len(serverIDs), len(states)), args...)
	if err != nil {
		return dst, fmt.Errorf("list retention rows of %s: %w", policy, err)
	}
	defer rows.Close()
	stateOf := map[string]ImageState{}
	for _, st := range ImageStates {
		stateOf[string(st)] = st
	}
	for rows.Next() {
		var server, packed string
		if err := rows.Scan(&server, &packed); err != nil {
			return dst, fmt.Errorf("scan retention rows of %s: %w", policy, err)
		}
		if dst, err = s.unpackRetention(dst, packed, policy, server, stateOf); err != nil {
			return dst, fmt.Errorf("retention rows of %s, server %s: %w", policy, server, err)
		}
	}
	if err := rows.Err(); err != nil {
		return dst, fmt.Errorf("list retention rows of %s: %w", policy, err)
	}
	return dst, nil
}

// unpackRetention parses retentionRowsQuery's records. Strings are slices of packed
// (no copies); the states and the owner are the shared constants.
func (s *Store) unpackRetention(dst []LineageRow, packed, policy, server string, stateOf map[string]ImageState) ([]LineageRow, error) {
	for packed != "" {
		var f [11]string
		for i := range f {
			j := strings.IndexByte(packed, ',')
			if j < 0 {
				return dst, fmt.Errorf("truncated record %q", packed)
			}
			f[i], packed = packed[:j], packed[j+1:]
		}
		id, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return dst, fmt.Errorf("bad row id %q", f[0])
		}
		n, err := strconv.Atoi(f[10])
		if err != nil || n < 0 || n > len(packed) {
			return dst, fmt.Errorf("row %d: bad reason length %q", id, f[10])
		}
		why := packed[:n]
		packed = packed[n:]
		st, ok := stateOf[f[1]]
		if !ok {
			return dst, fmt.Errorf("row %d: unknown state %q", id, f[1])
		}
		r := LineageRow{Row: id, ImageID: f[8], Policy: policy, ServerID: server, Owner: s.owner, State: st, Failure: Failure(f[7])}
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
			return dst, fmt.Errorf("row %d: %w", id, err)
		}
		dst = append(dst, r)
	}
	return dst, nil
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
