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

// retentionRowsQuery reads, per server, what retention decides on in three
// aggregates: the row ids and slots of every row (comma-separated; neither holds a
// comma), and a packed record of each row that is not a plain good row of this
// installation. A plain good row (state good, our owner, no reason, no failure) is
// all a million-row lineage is made of, and retention needs nothing of it but its
// slot (its state is good: every other row has a record, so no aggregate of the
// states is read); a || concatenation per row is what SQLite spent its time on, and
// group_concat of a bare column appends to one growing buffer. Each record is
//
//	id,state,slot,requested_at,failed_at,next_attempt_at,late_until,failure,image_id,owner,len,why
//
// where owner is empty when it is this installation's (?1), why is the delete
// reason of a deleting row and the reason of any other, and len is why's length in
// bytes: why comes last and is cut by length, so it may hold anything. Every other
// field is an enum, a fixed-width timestamp, an id or hex: no commas. The
// aggregates see the rows in the same order (one step each per row); which order
// that is, is not relied on: the caller sorts each server's rows. The index is named:
// the planner, without statistics, would take the UNIQUE autoindex, which holds
// neither the state nor the owner, and seek the table for every row.
//
// The states are filtered by what is left out (notStates): retention reads every
// state but deleted, and one <> per row costs SQLite less than an IN of six.
func retentionRowsQuery(servers, notStates int) string {
	q := `SELECT server_id, group_concat(id), group_concat(slot),
			ifnull(group_concat(CASE WHEN state <> 'good' OR owner <> ?1 OR reason <> '' OR failure <> '' THEN
				id || ',' || state || ',' || slot || ',' || requested_at || ',' ||
				ifnull(failed_at, '') || ',' || ifnull(next_attempt_at, '') || ',' || ifnull(late_until, '') || ',' ||
				failure || ',' || ifnull(image_id, '') || ',' ||
				iif(owner = ?1, '', owner) || ',' || length(CAST(why AS BLOB)) || ',' || why END, ''), '')
		FROM (SELECT id, server_id, state, slot, requested_at, failed_at, next_attempt_at, late_until, failure, image_id, owner,
				reason, CASE state WHEN 'deleting' THEN delete_reason ELSE reason END AS why
			FROM images INDEXED BY images_retention WHERE policy = ?2 AND server_id IN (` + inMarks(servers) + `)`
	for range notStates {
		q += ` AND state <> ?`
	}
	return q + `) GROUP BY server_id ORDER BY server_id`
}

// AppendRetentionRows appends to dst the rows of policy for the given servers in
// the given states (all when none), ordered by server, newest slot first (then by
// row id), like AppendLineage; but it fills only what retention decides on. A
// plain good row (this installation's, no reason, no failure) has Row, Policy,
// ServerID, Slot, Owner and State; any other row also has ImageID, Reason (the
// failure's), DeleteReason (a deleting row's), RequestedAt, FailedAt,
// NextAttemptAt, LateUntil and Failure. Name, ServerName, VolumeBacked and
// ActiveAt stay zero, and so does a plain good row's ImageID: a caller that shows
// or deletes rows reads them in full for the few it shows (LineageRows).
func (s *Store) AppendRetentionRows(ctx context.Context, dst []LineageRow, policy string, serverIDs []string, states []ImageState) ([]LineageRow, error) {
	if len(serverIDs) == 0 {
		return dst, nil
	}
	var notStates []ImageState
	if len(states) > 0 {
		for _, st := range ImageStates {
			if !slices.Contains(states, st) {
				notStates = append(notStates, st)
			}
		}
	}
	args := make([]any, 0, 2+len(serverIDs)+len(notStates))
	args = append(args, s.owner, policy)
	for _, id := range serverIDs {
		args = append(args, id)
	}
	for _, st := range notStates {
		args = append(args, string(st))
	}
	rows, err := s.reader().QueryContext(ctx, retentionRowsQuery(len(serverIDs), len(notStates)), args...)
	if err != nil {
		return dst, fmt.Errorf("list retention rows of %s: %w", policy, err)
	}
	defer rows.Close()
	u := unpacker{s: s, policy: policy, stateOf: map[string]ImageState{}, slots: map[string]time.Time{}}
	for _, st := range ImageStates {
		u.stateOf[string(st)] = st
	}
	for rows.Next() {
		var server, ids, slots, records string
		if err := rows.Scan(&server, &ids, &slots, &records); err != nil {
			return dst, fmt.Errorf("scan retention rows of %s: %w", policy, err)
		}
		if dst, err = u.unpack(dst, server, ids, slots, records); err != nil {
			return dst, fmt.Errorf("retention rows of %s, server %s: %w", policy, server, err)
		}
	}
	if err := rows.Err(); err != nil {
		return dst, fmt.Errorf("list retention rows of %s: %w", policy, err)
	}
	return dst, nil
}

// unpacker parses retentionRowsQuery's results. Strings are slices of the scanned
// ones (no copies); the states and the owner are the shared constants.
type unpacker struct {
	s       *Store
	policy  string
	stateOf map[string]ImageState
	// slots caches parsed slot instants: a policy's servers share its slots.
	slots map[string]time.Time
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

// unpack appends one server's rows, newest slot first.
func (u *unpacker) unpack(dst []LineageRow, server, ids, slots, records string) ([]LineageRow, error) {
	first := len(dst)
	var rec LineageRow
	haveRec := false
	for ids != "" {
		id, err := strconv.ParseInt(nextField(&ids), 10, 64)
		if err != nil {
			return dst, fmt.Errorf("bad row id: %w", err)
		}
		if !haveRec && records != "" {
			if rec, records, err = u.record(records, server); err != nil {
				return dst, err
			}
			haveRec = true
		}
		slot := nextField(&slots)
		if haveRec && rec.Row == id {
			dst = append(dst, rec)
			haveRec = false
			continue
		}
		// No record: a plain good row.
		r := LineageRow{Row: id, Policy: u.policy, ServerID: server, Owner: u.s.owner, State: ImageGood}
		var ok bool
		if r.Slot, ok = u.slots[slot]; !ok {
			if r.Slot, err = packedTime(slot); err != nil {
				return dst, fmt.Errorf("row %d: %w", id, err)
			}
			u.slots[slot] = r.Slot
		}
		dst = append(dst, r)
	}
	if haveRec || records != "" {
		return dst, fmt.Errorf("record of row %d matches no row id", rec.Row)
	}
	rs := dst[first:]
	newestFirst := func(a, b LineageRow) int {
		if c := b.Slot.Compare(a.Slot); c != 0 {
			return c
		}
		return cmp.Compare(a.Row, b.Row)
	}
	if !slices.IsSortedFunc(rs, newestFirst) {
		slices.SortFunc(rs, newestFirst)
	}
	return dst, nil
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
