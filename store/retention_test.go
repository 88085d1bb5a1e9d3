package store

import (
	"context"
	"fmt"
	"reflect"
	"testing"
	"time"
)

// TestAppendRetentionRowsMatchesLineage checks the packed retention query against
// the plain one, field by field, on rows that stress the packing: reasons holding
// commas, digits and newlines, a foreign owner, a deleting row's delete reason,
// rows without an image id or a failure time, a good row with a reason next to
// plain good rows (whose packed form is their slot and owner only), other rows
// between plain good rows, good rows of two owners on one server, a server with no
// good row.
func TestAppendRetentionRowsMatchesLineage(t *testing.T) {
	ctx := context.Background()
	f := newMetricsFixture(t)
	s1 := f.slot("web", day(22, 2, 30), OutcomeRan, 3, 0)
	s2 := f.slot("web", day(23, 2, 30), OutcomeRan, 3, 0)
	s3 := f.slot("web", day(24, 2, 30), OutcomeRan, 3, 0) // plain good rows only
	var rows []int64
	for _, sl := range []Slot{s1, s2, s3} {
		for _, srv := range []string{"a", "b", "c"} {
			rows = append(rows, f.image(sl, srv, "good", sl.Slot))
		}
	}
	// Plain good rows older than the others (which then sort between two plain
	// rows of their server), and a server with no good row.
	s0 := f.slot("web", day(21, 2, 30), OutcomeRan, 4, 1)
	for _, srv := range []string{"a", "b", "c"} {
		f.image(s0, srv, "good", s0.Slot)
	}
	f.image(s0, "d", "failed", s0.Slot)
	exec := func(q string, args ...any) {
		t.Helper()
		if _, err := f.s.db.Exec(q, args...); err != nil {
			t.Fatal(err)
		}
	}
	exec(`UPDATE images SET state = 'failed', reason = ?, failed_at = ?, failure = 'timeout', late_until = ? WHERE id = ?`,
		"12,a,b\n3,4,", fmtTime(day(22, 3, 0)), fmtTime(day(23, 3, 0)), rows[0])
	exec(`UPDATE images SET state = 'deleting', delete_reason = ?, reason = 'old', next_attempt_at = ? WHERE id = ?`,
		"keep_last 1, 2, 3 — ünïcode", fmtTime(day(24, 1, 0)), rows[1])
	exec(`UPDATE images SET owner = 'someone-else' WHERE id = ?`, rows[2])
	exec(`UPDATE images SET state = 'requested', image_id = NULL WHERE id = ?`, rows[3])
	exec(`UPDATE images SET state = 'deleted' WHERE id = ?`, rows[4])
	exec(`UPDATE images SET reason = 'adopted, 2 snapshots' WHERE id = ?`, rows[5])
	f.slot("db", day(23, 4, 0), OutcomeRan, 1, 0)

	servers := []string{"a", "b", "c", "d", "zz"}
	allButDeleted := []ImageState{ImageRequested, ImageCreating, ImageGood, ImageFailed, ImageDeleting, ImageKeptProtected}
	for _, only := range [][]string{servers, {"b"}, {"c", "zz"}, {"d"}} {
		want, err := f.s.AppendLineage(ctx, nil, "web", only, allButDeleted)
		if err != nil {
			t.Fatal(err)
		}
		got, err := f.s.AppendRetentionRows(ctx, nil, "web", only)
		if err != nil {
			t.Fatal(err)
		}
		// The packed rows leave out what only a report shows, and a plain good
		// row all but its slot, state and owner.
		for i := range want {
			want[i].Name, want[i].ServerName, want[i].VolumeBacked, want[i].ActiveAt = "", "", false, time.Time{}
			if w := want[i]; w.State == ImageGood && w.Reason == "" && w.Failure == "" {
				want[i] = LineageRow{Row: w.Row, Policy: w.Policy, ServerID: w.ServerID, Slot: w.Slot, Owner: w.Owner, State: w.State}
			}
			if want[i].State == ImageDeleting {
				want[i].Reason = ""
			} else {
				want[i].DeleteReason = ""
			}
		}
		if len(only) == len(servers) && len(got) != 12 {
			t.Errorf("%d rows, want 12", len(got))
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("servers %v:\n got %s\nwant %s", only, dump(got), dump(want))
		}
	}
	// The servers, by the skip scan and by DISTINCT over every row.
	var distinct []string
	if err := func() error {
		rs, err := f.s.db.QueryContext(ctx, `SELECT DISTINCT server_id FROM images WHERE policy = 'web' ORDER BY server_id`)
		if err != nil {
			return err
		}
		defer rs.Close()
		for rs.Next() {
			var id string
			if err := rs.Scan(&id); err != nil {
				return err
			}
			distinct = append(distinct, id)
		}
		return rs.Err()
	}(); err != nil {
		t.Fatal(err)
	}
	if srv, err := f.s.LineageServers(ctx, "web"); err != nil || !reflect.DeepEqual(srv, distinct) || len(srv) != 4 {
		t.Errorf("LineageServers(web) = %v, %v; DISTINCT gives %v", srv, err, distinct)
	}
	if srv, err := f.s.LineageServers(ctx, "none"); err != nil || len(srv) != 0 {
		t.Errorf("LineageServers(none) = %v, %v; want none", srv, err)
	}
	full, err := f.s.LineageRows(ctx, []int64{rows[2], rows[0]})
	if err != nil || len(full) != 2 || full[0].Row != rows[0] || full[1].Owner != "someone-else" || full[0].Name == "" {
		t.Errorf("LineageRows = %+v, %v", full, err)
	}
}

func dump(rows []LineageRow) string {
	var s string
	for _, r := range rows {
		s += fmt.Sprintf("\n  %+v", r)
	}
	return s
}

// TestReadPoolCacheSize: each read connection has a small page cache (the pool's
// reads walk far more than any cache holds); the writer keeps SQLite's default.
func TestReadPoolCacheSize(t *testing.T) {
	f := newMetricsFixture(t)
	var n int
	if err := f.s.rdb.QueryRow("PRAGMA cache_size").Scan(&n); err != nil || n != -readCacheKiB {
		t.Errorf("read connection cache_size = %d, %v; want %d", n, err, -readCacheKiB)
	}
	if err := f.s.db.QueryRow("PRAGMA cache_size").Scan(&n); err != nil || n != -2000 {
		t.Errorf("write connection cache_size = %d, %v; want SQLite's -2000", n, err)
	}
}

// TestRetentionRowsReadOneSnapshot changes a row's kind between the two queries of
// AppendRetentionRows, as a late image promoted to good does while a prune plans:
// read outside one snapshot, the row came back twice (failed, then good).
func TestRetentionRowsReadOneSnapshot(t *testing.T) {
	ctx := context.Background()
	f := newMetricsFixture(t)
	sl := f.slot("web", day(22, 2, 30), OutcomeRan, 2, 0)
	late := f.image(sl, "a", "failed", sl.Slot)
	f.image(sl, "b", "good", sl.Slot)
	if _, err := f.s.db.Exec(`UPDATE images SET failure = 'timeout', reason = 'timed out', late_until = ? WHERE id = ?`,
		fmtTime(day(23, 2, 30)), late); err != nil {
		t.Fatal(err)
	}
	betweenRetentionQueries = func() {
		if _, err := f.s.db.Exec(`UPDATE images SET state = 'good', failure = '', reason = '' WHERE id = ?`, late); err != nil {
			t.Error(err)
		}
	}
	t.Cleanup(func() { betweenRetentionQueries = nil })
	got, err := f.s.AppendRetentionRows(ctx, nil, "web", []string{"a", "b"})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int64]int{}
	for _, r := range got {
		seen[r.Row]++
	}
	if len(got) != 2 || seen[late] != 1 {
		t.Fatalf("rows %+v: want each of the two rows once", got)
	}
	for _, r := range got {
		if r.Row == late && r.State != ImageFailed {
			t.Errorf("row %d read as %s: the snapshot taken at the first query says failed", late, r.State)
		}
	}
}
