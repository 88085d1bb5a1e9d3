package store

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// explain returns SQLite's EXPLAIN QUERY PLAN of q, one detail per line.
func explain(t *testing.T, s *Store, q string, args ...any) string {
	t.Helper()
	rows, err := s.rdb.QueryContext(context.Background(), "EXPLAIN QUERY PLAN "+q, args...)
	if err != nil {
		t.Fatalf("explain %s: %v", q, err)
	}
	defer rows.Close()
	var lines []string
	for rows.Next() {
		var id, parent, notused int
		var detail string
		if err := rows.Scan(&id, &parent, &notused, &detail); err != nil {
			t.Fatal(err)
		}
		lines = append(lines, detail)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return strings.Join(lines, "\n")
}

// TestHotQueriesUseTheirIndexes checks, with EXPLAIN QUERY PLAN, that each query a
// daemon makes per run or per slot reads the index meant for it and never walks a
// whole table (or a whole policy's lineage) that grows with history. A schema or
// query change that loses an index fails here instead of in a benchmark.
func TestHotQueriesUseTheirIndexes(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(t.TempDir(), "lineage.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	slot := time.Date(2026, 11, 30, 2, 30, 0, 0, time.UTC)
	settle, settleArgs := ImageFilter{Policy: "p", States: []ImageState{ImageRequested, ImageCreating}}.query(imageColumns)
	ofSlot, ofSlotArgs := ImageFilter{Policy: "p", Slot: slot}.query(imageColumns)
	inFlight, inFlightArgs := ImageFilter{States: []ImageState{ImageCreating, ImageRequested}}.query(imageColumns)
	serverInFlight, serverInFlightArgs := ImageFilter{Policy: "p", ServerID: "s",
		States: []ImageState{ImageRequested, ImageCreating}}.query(imageColumns)
	var liveArgs []any
	for _, st := range LiveStates {
		liveArgs = append(liveArgs, string(st))
	}
	for _, c := range []struct {
		name string
		q    string
		args []any
		want []string // each must appear in the plan
	}{
		{"image counts of a policy", countImagesOfPolicy, []any{"p"}, []string{"USING COVERING INDEX images_policy_state (policy=?)"}},
		{"newest good per server", newestGoodPerServer, []any{1, "p", "", 1, "p"}, []string{
			"USING INDEX images_slot_id (slot_id=?)",
			"USING INDEX events_policy_at (policy=? AND at>?)",
			"USING COVERING INDEX images_good_server (policy=? AND server_id=?)",
		}},
		{"leftover snapshots", countLeftoverSnapshots, nil, []string{"SEARCH sn USING INDEX snapshots_state (state=?)"}},
		{"settle: a policy's rows in progress", settle, settleArgs, []string{"USING INDEX images_policy_state (policy=? AND state=?)"}},
		{"a run's rows of its slot", ofSlot, ofSlotArgs, []string{"USING INDEX images_policy_slot (policy=? AND slot=?)"}},
		{"a server's rows in progress (before each createImage)", serverInFlight, serverInFlightArgs,
			[]string{"(policy=? AND server_id=?)"}},
		{"every row in progress (resume)", inFlight, inFlightArgs, []string{"USING INDEX images_state (state=?)"}},
		{"live rows (reconcile)", liveLineageQuery, liveArgs, []string{"USING INDEX images_state (state=?)"}},
		{"compaction candidates", compactCandidates, []any{"2026-01-01", 200}, []string{"USING COVERING INDEX images_deleted_at (deleted_at<?)"}},
		{"retention: good rows of a batch of servers", retentionGoodQuery(2), []any{"p", "a", "b"},
			[]string{"USING INDEX images_retention_good (policy=? AND server_id=?)"}},
		{"retention: other rows of a batch of servers", retentionOtherQuery(2), []any{"owner", "p", "a", "b"},
			[]string{"USING COVERING INDEX images_retention_other (policy=? AND server_id=?)"}},
		{"a policy's servers (skip scan)", lineageServersQuery, []any{"p"},
			[]string{"INDEX", "(policy=? AND server_id>?)"}},
	} {
		plan := explain(t, s, c.q, c.args...)
		for _, w := range c.want {
			if !strings.Contains(plan, w) {
				t.Errorf("%s: plan lacks %q:\n%s", c.name, w, plan)
			}
		}
		if strings.HasPrefix(c.name, "retention") && strings.Contains(plan, "TEMP B-TREE") {
			// The index order is the GROUP BY's and the ORDER BY's: no sort.
			t.Errorf("%s: a sort step in\n%s", c.name, plan)
		}
		for _, line := range strings.Split(plan, "\n") {
			// live and servers are the queries' own CTEs, not tables.
			if strings.HasPrefix(line, "SCAN ") && !strings.Contains(line, "INDEX") &&
				line != "SCAN live" && line != "SCAN servers" && line != "SCAN CONSTANT ROW" {
				t.Errorf("%s: a table scan: %q in\n%s", c.name, line, plan)
			}
		}
	}
}
