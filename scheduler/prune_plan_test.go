package scheduler

import (
	"context"
	"database/sql"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/imagekeeper/imagekeeper/store/storetest"
)

// TestPrunePlanOverManyBatchesMatchesTheFullReport plans a lineage of more servers
// than several batches hold (so the plan reads them on more than one reader and
// merges), with every kind of row the packed query treats apart: failed rows,
// open journals (due and not), protected rows, a foreign owner's row, a good row
// with a reason, some servers gone. The plan that shows only what happens (packed
// rows, read in parallel; kept, protected and deferred images are counted, not
// listed) must say exactly what the full report (every column of every row) says
// of those rows, count the same actions, and the full report must list every
// server once, in server order, newest slot first.
func TestPrunePlanOverManyBatchesMatchesTheFullReport(t *testing.T) {
	servers := 2*pruneReaders*pruneBatch + 17
	const perServer = 12
	ctx := context.Background()
	clock := storetest.NewClock(time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC))
	now := clock.Now()
	st := storetest.MustOpen(t, clock)
	path := st.Path()
	loadRows(t, path, st.Owner(), servers, perServer, now)
	db, err := sql.Open("sqlite3", "file:"+path+"?_journal_mode=WAL&_busy_timeout=10000")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	const tf = "2006-01-02T15:04:05.000000000Z"
	for _, q := range []string{
		// An open journal, due on some servers and not yet on others.
		`UPDATE images SET state = 'deleting', delete_reason = 'keep_last, the oldest', next_attempt_at = iif(server_id LIKE '%1', '` +
			now.Add(time.Hour).Format(tf) + `', '` + now.Add(-time.Hour).Format(tf) + `') WHERE name LIKE '%-11' AND server_id LIKE '%3'`,
		`UPDATE images SET state = 'kept_protected', next_attempt_at = '` + now.Add(24*time.Hour).Format(tf) +
			`' WHERE name LIKE '%-10' AND server_id LIKE '%4'`,
		`UPDATE images SET owner = 'someone-else' WHERE name LIKE '%-9' AND server_id LIKE '%5'`,
		`UPDATE images SET reason = 'adopted, 2 snapshots' WHERE name LIKE '%-8' AND server_id LIKE '%6'`,
		`UPDATE images SET state = 'deleted' WHERE name LIKE '%-7' AND server_id LIKE '%7'`,
		`UPDATE images SET state = 'requested', image_id = NULL WHERE name LIKE '%-0' AND server_id LIKE '%8'`,
	} {
		if res, err := db.Exec(q); err != nil {
			t.Fatal(err)
		} else if n, _ := res.RowsAffected(); n == 0 {
			t.Fatalf("no row for %s", q)
		}
	}

	ret := planRetention(t, st, clock, servers, 100000, "{keep_last: 3, keep_daily: 4, min_keep: 1, max_deletions_per_run: 300}",
		func(i int) bool { return i%9 != 0 }) // every ninth server is gone
	full, err := ret.Prune(ctx, "nightly", PruneOptions{DryRun: true, Full: true})
	if err != nil {
		t.Fatal(err)
	}
	shown, err := ret.Prune(ctx, "nightly", PruneOptions{DryRun: true})
	if err != nil {
		t.Fatal(err)
	}

	if full.Servers != servers || shown.Servers != servers || full.ServersGone != shown.ServersGone || full.ServersGone == 0 {
		t.Errorf("servers: full %d (%d gone), shown %d (%d gone); want %d", full.Servers, full.ServersGone,
			shown.Servers, shown.ServersGone, servers)
	}
	if !reflect.DeepEqual(full.Counts, shown.Counts) {
		t.Errorf("counts: full %v, shown %v", full.Counts, shown.Counts)
	}
	for _, a := range []PruneAction{PruneKeep, PruneDelete, PruneDeferred, PrunePending, PruneProtected, PruneRefused} {
		if full.Counts[a] == 0 {
			t.Errorf("no %s in the plan %v: the lineage does not exercise it", a, full.Counts)
		}
	}
	// Every server once, in order, each newest first.
	var order []string
	for i, it := range full.Items {
		if len(order) == 0 || order[len(order)-1] != it.ServerID {
			order = append(order, it.ServerID)
		} else if prev := full.Items[i-1]; prev.Slot.Before(it.Slot) {
			t.Fatalf("server %s: %v listed before the newer %v", it.ServerID, prev.Slot, it.Slot)
		}
	}
	if len(order) != servers || !slices.IsSorted(order) {
		t.Errorf("the full report lists %d servers (sorted %v), want each of %d once in order", len(order), slices.IsSorted(order), servers)
	}
	byRow := map[int64]PruneItem{}
	for _, it := range full.Items {
		byRow[it.ImageRow] = it
	}
	for _, it := range shown.Items {
		f, ok := byRow[it.ImageRow]
		if !ok {
			t.Fatalf("row %d shown but not in the full report", it.ImageRow)
		}
		// Age is taken from the same now; everything else must match too.
		if !reflect.DeepEqual(it, f) {
			t.Errorf("row %d:\nshown %+v\n full %+v", it.ImageRow, it, f)
		}
	}
	want := 0
	for _, it := range full.Items {
		if it.Action != PruneKeep && it.Action != PruneProtected && it.Action != PruneDeferred {
			want++
		}
	}
	if len(shown.Items) != want {
		t.Errorf("shown %d items, the full report has %d that are neither kept nor deferred", len(shown.Items), want)
	}
}
