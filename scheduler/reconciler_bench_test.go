package scheduler

import (
	"context"
	"database/sql"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/imagekeeper/imagekeeper/cloud"
	"github.com/imagekeeper/imagekeeper/cloud/cloudtest"
	"github.com/imagekeeper/imagekeeper/policy"
	"github.com/imagekeeper/imagekeeper/store"
	"github.com/imagekeeper/imagekeeper/store/storetest"
)

// BenchmarkReconcileMillion measures a report-only reconcile over a lineage of a
// million rows of which 900,000 are deleted (10,000 servers x 100 daily images, the
// newest 10 of each server good and in the cloud), and, meanwhile, how long a
// write of the store waits: a goroutine appends an audit event every 10 ms and the
// longest of those writes is reported. Run it alone, it is heavy:
//
//	go test ./scheduler -run '^$' -bench ReconcileMillion -benchtime 1x -benchmem
func BenchmarkReconcileMillion(b *testing.B) {
	const servers, perServer, live = 10_000, 100, 10
	ctx := context.Background()
	clock := storetest.NewClock(time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC))
	now := clock.Now()
	st := storetest.MustOpen(b, clock)
	path := st.Path()
	owner := st.Owner()
	db, err := sql.Open("sqlite3", "file:"+path+"?_journal_mode=WAL&_foreign_keys=1&_busy_timeout=10000")
	if err != nil {
		b.Fatal(err)
	}
	tx, err := db.Begin()
	if err != nil {
		b.Fatal(err)
	}
	ins, err := tx.Prepare(`INSERT INTO images (image_id, name, policy, server_id, server_name, slot, owner, state,
		requested_at, active_at, deleted_at, updated_at) VALUES (?, ?, 'nightly', ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
	if err != nil {
		b.Fatal(err)
	}
	const tf = "2006-01-02T15:04:05.000000000Z"
	var images []cloud.Image
	for s := range servers {
		sid := fmt.Sprintf("srv-%05d", s)
		for i := range perServer {
			slot := time.Date(2026, 11, 30-i, 1, 30, 0, 0, time.UTC)
			id := fmt.Sprintf("img-%05d-%03d", s, i)
			state, deleted := "good", any(nil)
			if i >= live {
				state, deleted = "deleted", slot.Add(30*24*time.Hour).Format(tf)
			} else {
				images = append(images, cloud.Image{ID: id, Status: "active", Properties: cloud.Stamp{Owner: owner,
					Policy: "nightly", Server: sid, Slot: StampSlot(slot)}.Properties()})
			}
			if _, err := ins.Exec(id, fmt.Sprintf("%s-%d", sid, i), sid, sid, slot.Format(tf), owner, state,
				slot.Format(tf), slot.Add(10*time.Minute).Format(tf), deleted, now.Format(tf)); err != nil {
				b.Fatal(err)
			}
		}
	}
	if err := tx.Commit(); err != nil {
		b.Fatal(err)
	}
	db.Close()
	mock := &cloudtest.Mock{
		ListImagesFunc:    func(context.Context, map[string]string) ([]cloud.Image, error) { return images, nil },
		ListSnapshotsFunc: func(context.Context) ([]cloud.Snapshot, error) { return nil, nil },
	}
	r := NewRunner(NewShared(SharedOptions{Cloud: mock, Store: st, Limits: policy.Limits{RequestsPerSecond: 1000},
		Now: clock.Now}), RunnerOptions{})

	var mu sync.Mutex
	var longest time.Duration
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			t0 := time.Now()
			if _, err := st.AddEvent(ctx, store.Event{Kind: "bench_write", Message: "a write during reconcile"}); err != nil {
				b.Error(err)
				return
			}
			d := time.Since(t0)
			mu.Lock()
			longest = max(longest, d)
			mu.Unlock()
		}
	}()
	b.ReportAllocs()
	b.ResetTimer()
	var rep *ReconcileReport
	for b.Loop() {
		if rep, err = NewReconciler(r.sh).Reconcile(ctx, nil, false); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	close(stop)
	wg.Wait()
	if rep.CloudImages != servers*live || len(rep.Findings) != 0 {
		b.Fatalf("implausible reconcile: %d cloud images, findings %v", rep.CloudImages, rep.Counts)
	}
	b.ReportMetric(float64(longest.Microseconds())/1000, "longest-write-ms")
}
