package scheduler

import (
	"context"
	"database/sql"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imagekeeper/imagekeeper/cloud"
	"github.com/imagekeeper/imagekeeper/cloud/cloudtest"
	"github.com/imagekeeper/imagekeeper/policy"
	"github.com/imagekeeper/imagekeeper/store"
	"github.com/imagekeeper/imagekeeper/store/storetest"
)

// BenchmarkPrunePlan measures retention planning over a million lineage rows
// (10,000 servers x 100 daily images, one in twenty failed): a dry-run Prune, which
// is the store query, the grouping by server, policy.Retain per server and the
// report. The rows are bulk-loaded once (that takes a while and is not measured).
// Run it alone, it is heavy:
//
//	go test ./scheduler -run '^$' -bench PrunePlan -benchtime 3x -benchmem
//
// peak-heap-MB samples the live heap every millisecond during the op.
func BenchmarkPrunePlan(b *testing.B) {
	const servers, perServer = 10_000, 100
	ctx := context.Background()
	clock := storetest.NewClock(time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC))
	now := clock.Now()
	st := storetest.MustOpen(b, clock)
	path := st.Path()
	loadRows(b, path, st.Owner(), servers, perServer, now)

	ret := planRetention(b, st, clock, servers, 1000,
		"{keep_last: 3, keep_daily: 7, keep_weekly: 4, keep_monthly: 12, keep_within: 48h, min_keep: 1}",
		func(int) bool { return true })

	runtime.GC()
	var peak atomic.Uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		var ms runtime.MemStats
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
			runtime.ReadMemStats(&ms)
			if ms.HeapAlloc > peak.Load() {
				peak.Store(ms.HeapAlloc)
			}
		}
	}()
	b.ReportAllocs()
	b.ResetTimer()
	var rep *PruneReport
	var err error
	for b.Loop() {
		rep, err = ret.Prune(ctx, "nightly", PruneOptions{DryRun: true})
		if err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	close(stop)
	wg.Wait()
	total := 0
	for _, n := range rep.Counts {
		total += n
	}
	if total != servers*perServer || rep.Counts[PruneDelete] != 50 {
		b.Fatalf("implausible plan: counts %v over %d rows", rep.Counts, total)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(servers*perServer), "ns/row")
	b.ReportMetric(float64(peak.Load())/(1<<20), "peak-heap-MB")
	b.ReportMetric(float64(rep.Counts[PruneDelete]), "to-delete")
}

// planRetention is a Retention over st for one policy, nightly, with the given
// retention rules (YAML flow), in a cloud where the servers srv-00000 onwards for
// which live holds exist, calls go at rps, and every image to delete is already
// gone from Glance (a plan reads each deletion it shows; gone is the cheapest
// answer that still plans a deletion).
func planRetention(tb testing.TB, st *store.Store, clock *storetest.Clock, servers int, rps float64, retention string,
	live func(i int) bool) *Retention {
	tb.Helper()
	cfg, err := policy.Parse("plan.yaml", []byte(`policies:
  - name: nightly
    select: {tags: [backup=nightly]}
    schedule: {cron: "30 2 * * *", timezone: Europe/Berlin}
    image: {name: '{{ .Server.Name }}', wait_timeout: 2h}
    retention: `+retention+"\n"))
	if err != nil {
		tb.Fatal(err)
	}
	var up []cloud.Server
	for i := range servers {
		if live(i) {
			up = append(up, cloud.Server{ID: fmt.Sprintf("srv-%05d", i), Name: fmt.Sprintf("srv-%05d", i), Status: "ACTIVE"})
		}
	}
	mock := &cloudtest.Mock{
		ListServersFunc: func(context.Context, cloud.Selector) ([]cloud.Server, error) { return up, nil },
		GetImageFunc: func(context.Context, string) (cloud.Image, error) {
			return cloud.Image{}, fmt.Errorf("plan fixture: %w", cloud.ErrNotFound)
		},
	}
	r := NewRunner(NewShared(SharedOptions{Cloud: mock, Store: st, Limits: policy.Limits{RequestsPerSecond: rps},
		Now: clock.Now}), RunnerOptions{})
	return NewRetention(r.sh, policy.NewCoordinator(cfg), RetentionOptions{})
}

// loadRows bulk-inserts the lineage in one transaction, bypassing the store's
// one-row-at-a-time API (a million intents would take minutes).
func loadRows(b testing.TB, path, owner string, servers, perServer int, now time.Time) {
	b.Helper()
	db, err := sql.Open("sqlite3", "file:"+path+"?_journal_mode=WAL&_foreign_keys=1&_busy_timeout=10000")
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	tx, err := db.Begin()
	if err != nil {
		b.Fatal(err)
	}
	ins, err := tx.Prepare(`INSERT INTO images (image_id, name, policy, server_id, server_name, slot, owner, state, reason,
		requested_at, active_at, failed_at, updated_at) VALUES (?, ?, 'nightly', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
	if err != nil {
		b.Fatal(err)
	}
	const tf = "2006-01-02T15:04:05.000000000Z"
	for s := range servers {
		sid := fmt.Sprintf("srv-%05d", s)
		for i := range perServer {
			slot := time.Date(2026, 11, 30-i, 1, 30, 0, 0, time.UTC)
			state, reason, active, failed := "good", "", any(slot.Add(10*time.Minute).Format(tf)), any(nil)
			if (s+i)%20 == 0 {
				state, reason, active, failed = "failed", "snapshot error", nil, slot.Add(time.Hour).Format(tf)
			}
			if _, err := ins.Exec(fmt.Sprintf("img-%05d-%03d", s, i), fmt.Sprintf("%s-%d", sid, i), sid, sid, slot.Format(tf),
				owner, state, reason, slot.Format(tf), active, failed, now.Format(tf)); err != nil {
				b.Fatal(err)
			}
		}
	}
	if err := tx.Commit(); err != nil {
		b.Fatal(err)
	}
}
