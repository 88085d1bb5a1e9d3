package store_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	_ "github.com/mattn/go-sqlite3"

	"github.com/imagekeeper/imagekeeper/store"
	"github.com/imagekeeper/imagekeeper/store/storetest"
)

// newClock is the store tests' clock, in a zone other than UTC so that a
// timestamp written without converting to UTC shows.
func newClock() *storetest.Clock {
	return storetest.NewClock(time.Date(2026, 11, 24, 2, 30, 0, 0, time.FixedZone("CST", 8*3600)))
}

func TestOpenCreatesPrivateFileWithWALAndMigrations(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lineage.db")
	s := storetest.MustOpenAt(t, path, nil)
	ctx := context.Background()

	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if mode := fi.Mode().Perm(); mode != 0o600 {
		t.Errorf("database mode = %o, want 600", mode)
	}
	// A write makes the WAL file; it must be private too.
	if _, err := s.AddEvent(ctx, store.Event{Kind: "test", Message: "hello"}); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path + "-wal"); err != nil {
		t.Errorf("no WAL file: %v", err)
	} else if mode := fi.Mode().Perm(); mode != 0o600 {
		t.Errorf("WAL mode = %o, want 600", mode)
	}
	v, err := s.SchemaVersion(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if v != store.LatestSchemaVersion() || v < 1 {
		t.Errorf("schema version = %d, want %d", v, store.LatestSchemaVersion())
	}
	if len(s.Owner()) != 32 {
		t.Errorf("owner %q: want 32 hex characters", s.Owner())
	}

	// Inspect with a separate plain connection: pragmas and recorded migrations.
	db, err := sql.Open("sqlite3", "file:"+path+"?_foreign_keys=1")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var mode string
	if err := db.QueryRow("PRAGMA journal_mode").Scan(&mode); err != nil || mode != "wal" {
		t.Errorf("journal_mode = %q, %v; want wal", mode, err)
	}
	var n int
	if err := db.QueryRow("SELECT COUNT(*) FROM schema_migrations").Scan(&n); err != nil || n != store.LatestSchemaVersion() {
		t.Errorf("schema_migrations rows = %d, %v; want %d", n, err, store.LatestSchemaVersion())
	}
}

func TestReopenKeepsOwnerAndData(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lineage.db")
	ctx := context.Background()
	c := newClock()
	s := storetest.MustOpenAt(t, path, c)
	owner := s.Owner()
	slot := time.Date(2026, 11, 24, 2, 30, 0, 0, time.UTC)
	if _, _, err := s.RecordIntent(ctx, store.Intent{Policy: "p", ServerID: "srv", Slot: slot, Name: "n"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := storetest.MustOpenAt(t, path, c)
	if s2.Owner() != owner {
		t.Errorf("owner changed on reopen: %q -> %q", owner, s2.Owner())
	}
	im, err := s2.ImageByKey(ctx, "p", "srv", slot)
	if err != nil {
		t.Fatal(err)
	}
	if im.State != store.ImageRequested || im.Owner != owner {
		t.Errorf("reopened row = %+v", im)
	}
	// Timestamps come back in UTC and equal to the clock's instant.
	if !im.RequestedAt.Equal(c.Now()) || im.RequestedAt.Location() != time.UTC {
		t.Errorf("requested_at = %v, want %v in UTC", im.RequestedAt, c.Now())
	}
}

func TestFutureSchemaIsRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lineage.db")
	ctx := context.Background()
	storetest.MustOpenAt(t, path, nil).Close()
	db, err := sql.Open("sqlite3", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	future := store.LatestSchemaVersion() + 7
	if _, err := db.Exec(`INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, 'future.sql', 'x')`, future); err != nil {
		t.Fatal(err)
	}
	db.Close()

	_, err = store.Open(ctx, path, store.Options{})
	if !errors.Is(err, store.ErrFutureSchema) {
		t.Fatalf("open future database: err = %v, want ErrFutureSchema", err)
	}
	for _, want := range []string{fmt.Sprint(future), fmt.Sprint(store.LatestSchemaVersion()), path} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
}

func TestIntentIsIdempotentPerPolicyServerSlot(t *testing.T) {
	s := storetest.MustOpen(t, newClock())
	ctx := context.Background()
	slot := time.Date(2026, 11, 24, 2, 30, 0, 0, time.UTC)
	in := store.Intent{Policy: "web", ServerID: "srv-1", Slot: slot, Name: "web-1-a",
		Metadata: map[string]string{"imagekeeper_owner": s.Owner(), "k": "v"}}
	first, created, err := s.RecordIntent(ctx, in)
	if err != nil || !created {
		t.Fatalf("first intent: created=%v err=%v", created, err)
	}
	in.Name = "another-name"
	second, created, err := s.RecordIntent(ctx, in)
	if err != nil || created {
		t.Fatalf("second intent: created=%v err=%v", created, err)
	}
	if second.Row != first.Row || second.Name != "web-1-a" {
		t.Errorf("second intent returned %+v, want the first row unchanged", second)
	}
	if first.Metadata["k"] != "v" {
		t.Errorf("metadata = %v", first.Metadata)
	}
	// Same slot, same server, another policy: a separate row.
	in.Policy = "db"
	other, created, err := s.RecordIntent(ctx, in)
	if err != nil || !created || other.Row == first.Row {
		t.Errorf("other policy: created=%v err=%v row=%d", created, err, other.Row)
	}
	// The schema itself refuses a duplicate key, whatever the caller does.
	if _, err := s.SetImageID(ctx, first.Row, "img-1", false, "created"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetImageID(ctx, other.Row, "img-1", false, "created"); err == nil {
		t.Error("two rows got the same image id")
	}
}

func TestImageLifecycleAndEvents(t *testing.T) {
	c := newClock()
	s := storetest.MustOpen(t, c)
	ctx := context.Background()
	slot := time.Date(2026, 11, 24, 2, 30, 0, 0, time.UTC)
	sl, err := s.StartSlot(ctx, store.Slot{Policy: "web", Slot: slot, Trigger: store.TriggerScheduled, PolicyVersion: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	im, _, err := s.RecordIntent(ctx, store.Intent{Policy: "web", ServerID: "srv", Slot: slot, SlotID: sl.ID, Name: "n", VolumeBacked: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.MarkGood(ctx, im.Row, store.Good{}); !errors.Is(err, store.ErrConflict) {
		t.Errorf("requested -> good: err = %v, want ErrConflict", err)
	}
	if _, err := s.BeginAttempt(ctx, im.Row, "n", nil); err != nil {
		t.Fatal(err)
	}
	c.Advance(time.Second)
	if im, err = s.SetImageID(ctx, im.Row, "img-1", false, "createImage returned img-1"); err != nil {
		t.Fatal(err)
	}
	if im.State != store.ImageCreating || im.Attempts != 1 {
		t.Errorf("after SetImageID: %+v", im)
	}
	zero := 0
	if err := s.AddSnapshots(ctx, im.Row, []store.Snapshot{{SnapshotID: "snap-1", VolumeID: "vol-1", DeviceName: "/dev/vda", BootIndex: &zero}, {SnapshotID: "snap-2"}}); err != nil {
		t.Fatal(err)
	}
	// Adding again is a no-op; adding to another image is refused.
	if err := s.AddSnapshots(ctx, im.Row, []store.Snapshot{{SnapshotID: "snap-1"}}); err != nil {
		t.Errorf("re-adding snapshot: %v", err)
	}
	if _, err := s.UpdateSnapshot(ctx, "snap-1", store.SnapshotUpdate{State: store.SnapshotAvailable, SizeGB: 10}); err != nil {
		t.Fatal(err)
	}
	// Not good while one snapshot is still creating.
	if _, err := s.MarkGood(ctx, im.Row, store.Good{}); !errors.Is(err, store.ErrConflict) || !strings.Contains(err.Error(), "snap-2") {
		t.Errorf("good with a creating snapshot: err = %v, want ErrConflict naming snap-2", err)
	}
	if _, err := s.UpdateSnapshot(ctx, "snap-2", store.SnapshotUpdate{State: store.SnapshotAvailable, VolumeID: "vol-2"}); err != nil {
		t.Fatal(err)
	}
	// Polling the same state twice writes no second event.
	if _, err := s.UpdateSnapshot(ctx, "snap-2", store.SnapshotUpdate{State: store.SnapshotAvailable}); err != nil {
		t.Fatal(err)
	}
	c.Advance(time.Second)
	im, err = s.MarkGood(ctx, im.Row, store.Good{SizeBytes: 0, AZ: "az-1"})
	if err != nil {
		t.Fatal(err)
	}
	if im.State != store.ImageGood || im.AZ != "az-1" || !im.ActiveAt.Equal(c.Now()) {
		t.Errorf("good row = %+v", im)
	}
	snaps, err := s.Snapshots(ctx, im.Row)
	if err != nil {
		t.Fatal(err)
	}
	if len(snaps) != 2 || snaps[0].VolumeID != "vol-1" || snaps[0].BootIndex == nil || *snaps[0].BootIndex != 0 ||
		snaps[1].VolumeID != "vol-2" || snaps[0].SizeGB != 10 || snaps[1].AvailableAt.IsZero() {
		t.Errorf("snapshots = %+v", snaps)
	}
	if _, err := s.MarkFailed(ctx, im.Row, "late"); !errors.Is(err, store.ErrConflict) {
		t.Errorf("good -> failed: err = %v, want ErrConflict", err)
	}
	evs, err := s.Events(ctx, store.EventFilter{ImageRow: im.Row})
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, e := range evs {
		kinds = append(kinds, e.Kind)
	}
	want := []string{store.EventImageRequested, store.EventCreateAttempt, store.EventImageCreating, store.EventSnapshotAdded,
		store.EventSnapshotAdded, store.EventSnapshotState, store.EventSnapshotState, store.EventImageGood}
	if strings.Join(kinds, ",") != strings.Join(want, ",") {
		t.Errorf("events = %v\nwant     %v", kinds, want)
	}
	if err := s.FinishSlot(ctx, sl.ID, store.OutcomeRan, "", store.SlotCounts{Selected: 1, Good: 1}); err != nil {
		t.Fatal(err)
	}
	got, err := s.SlotByKey(ctx, "web", slot)
	if err != nil {
		t.Fatal(err)
	}
	if got.Outcome != store.OutcomeRan || got.Counts.Good != 1 || got.FinishedAt.IsZero() || got.Runs != 1 {
		t.Errorf("slot = %+v", got)
	}
}

func TestDropIntentOnlyForIDlessRequested(t *testing.T) {
	s := storetest.MustOpen(t, newClock())
	ctx := context.Background()
	slot := time.Date(2026, 11, 24, 2, 30, 0, 0, time.UTC)
	a, _, _ := s.RecordIntent(ctx, store.Intent{Policy: "p", ServerID: "a", Slot: slot, Name: "a"})
	b, _, _ := s.RecordIntent(ctx, store.Intent{Policy: "p", ServerID: "b", Slot: slot, Name: "b"})
	if _, err := s.SetImageID(ctx, b.Row, "img-b", false, ""); err != nil {
		t.Fatal(err)
	}
	if err := s.DropIntent(ctx, b.Row, "busy"); !errors.Is(err, store.ErrConflict) {
		t.Errorf("dropping a row with an image id: err = %v, want ErrConflict", err)
	}
	if err := s.DropIntent(ctx, a.Row, "server busy: 409"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Image(ctx, a.Row); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("dropped row still there: %v", err)
	}
	evs, err := s.Events(ctx, store.EventFilter{ImageRow: a.Row, Kind: store.EventIntentDropped})
	if err != nil || len(evs) != 1 || evs[0].Message != "server busy: 409" {
		t.Errorf("drop event = %+v, %v", evs, err)
	}
	// The slot can be asked for again.
	if _, created, err := s.RecordIntent(ctx, store.Intent{Policy: "p", ServerID: "a", Slot: slot, Name: "a"}); err != nil || !created {
		t.Errorf("re-intent after drop: created=%v err=%v", created, err)
	}
}

func TestEventsAreAppendOnly(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lineage.db")
	s := storetest.MustOpenAt(t, path, nil)
	if _, err := s.AddEvent(context.Background(), store.Event{Kind: "k", Message: "m"}); err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite3", "file:"+path+"?_busy_timeout=5000")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`UPDATE events SET message = 'changed'`); err == nil || !strings.Contains(err.Error(), "append-only") {
		t.Errorf("update of events: err = %v, want append-only refusal", err)
	}
	if _, err := db.Exec(`DELETE FROM events`); err == nil || !strings.Contains(err.Error(), "append-only") {
		t.Errorf("delete of events: err = %v, want append-only refusal", err)
	}
}

func TestSlotsRerunAndRecord(t *testing.T) {
	c := newClock()
	s := storetest.MustOpen(t, c)
	ctx := context.Background()
	t1 := time.Date(2026, 11, 24, 2, 0, 0, 0, time.UTC)
	t2 := t1.Add(time.Hour)
	a, err := s.StartSlot(ctx, store.Slot{Policy: "p", Slot: t1, Trigger: store.TriggerScheduled})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.FinishSlot(ctx, a.ID, store.OutcomeFailed, "list servers: cloud unavailable", store.SlotCounts{}); err != nil {
		t.Fatal(err)
	}
	b, err := s.StartSlot(ctx, store.Slot{Policy: "p", Slot: t1, Trigger: store.TriggerManual})
	if err != nil {
		t.Fatal(err)
	}
	if b.ID != a.ID || b.Runs != 2 || b.Outcome != store.OutcomeRunning || b.Trigger != store.TriggerManual {
		t.Errorf("re-run slot = %+v", b)
	}
	if _, err := s.RecordSlot(ctx, store.Slot{Policy: "p", Slot: t1, Outcome: store.OutcomeMissed}); !errors.Is(err, store.ErrConflict) {
		t.Errorf("record missed over a run slot: err = %v, want ErrConflict", err)
	}
	if _, err := s.RecordSlot(ctx, store.Slot{Policy: "p", Slot: t2, Outcome: store.OutcomeMissed, Reason: "late by 7h"}); err != nil {
		t.Fatal(err)
	}
	// A manual run after t2 is not a slot of the schedule: LastSlot skips it, or the
	// daemon would never see the scheduled slots missed before it.
	manual, err := s.StartSlot(ctx, store.Slot{Policy: "p", Slot: t2.Add(time.Hour), Trigger: store.TriggerManual})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.FinishSlot(ctx, manual.ID, store.OutcomeRan, "", store.SlotCounts{}); err != nil {
		t.Fatal(err)
	}
	last, err := s.LastSlot(ctx, "p")
	if err != nil || !last.Slot.Equal(t2) || last.Outcome != store.OutcomeMissed || last.Reason != "late by 7h" {
		t.Errorf("last slot = %+v, %v", last, err)
	}
	if _, err := s.LastSlot(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("last slot of unknown policy: %v", err)
	}
	all, err := s.Slots(ctx, store.SlotFilter{Policy: "p"})
	if err != nil || len(all) != 3 || !all[1].Slot.Equal(t2) {
		t.Errorf("slots = %+v, %v", all, err)
	}
}

// TestConcurrentWriters hammers one store from many goroutines and a second Store on
// the same file (a CLI next to the daemon): every intent lands exactly once and no
// call fails with "database is locked".
func TestConcurrentWriters(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lineage.db")
	c := newClock()
	s1 := storetest.MustOpenAt(t, path, c)
	s2 := storetest.MustOpenAt(t, path, c)
	ctx := context.Background()
	slot := time.Date(2026, 11, 24, 2, 30, 0, 0, time.UTC)
	const servers, writers = 20, 8
	var wg sync.WaitGroup
	var mu sync.Mutex
	created := map[string]int{}
	errs := make(chan error, servers*writers)
	for w := 0; w < writers; w++ {
		st := s1
		if w%2 == 1 {
			st = s2
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < servers; i++ {
				id := fmt.Sprintf("srv-%02d", i)
				im, ok, err := st.RecordIntent(ctx, store.Intent{Policy: "p", ServerID: id, Slot: slot, Name: id})
				if err != nil {
					errs <- err
					return
				}
				if ok {
					mu.Lock()
					created[id]++
					mu.Unlock()
				}
				if _, err := st.AddEvent(ctx, store.Event{Kind: "poke", ImageRow: im.Row}); err != nil {
					errs <- err
					return
				}
				if _, err := st.Images(ctx, store.ImageFilter{Policy: "p"}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if len(created) != servers {
		t.Errorf("%d servers got an intent, want %d", len(created), servers)
	}
	for id, n := range created {
		if n != 1 {
			t.Errorf("server %s: %d intents created, want 1", id, n)
		}
	}
	ims, err := s1.Images(ctx, store.ImageFilter{Policy: "p", Slot: slot})
	if err != nil || len(ims) != servers {
		t.Errorf("rows = %d, %v; want %d", len(ims), err, servers)
	}
}

func TestImagesFilter(t *testing.T) {
	s := storetest.MustOpen(t, newClock())
	ctx := context.Background()
	slot := time.Date(2026, 11, 24, 2, 30, 0, 0, time.UTC)
	for i, srv := range []string{"a", "b", "c"} {
		im, _, err := s.RecordIntent(ctx, store.Intent{Policy: "p", ServerID: srv, Slot: slot.Add(time.Duration(i) * time.Hour), Name: srv})
		if err != nil {
			t.Fatal(err)
		}
		if srv != "a" {
			if _, err := s.SetImageID(ctx, im.Row, "img-"+srv, srv == "c", ""); err != nil {
				t.Fatal(err)
			}
		}
	}
	got, err := s.Images(ctx, store.ImageFilter{States: []store.ImageState{store.ImageCreating}})
	if err != nil || len(got) != 2 || got[0].ServerID != "b" || !got[1].Adopted {
		t.Errorf("creating images = %+v, %v", got, err)
	}
	got, err = s.Images(ctx, store.ImageFilter{ServerID: "a"})
	if err != nil || len(got) != 1 || got[0].ImageID != "" {
		t.Errorf("server a = %+v, %v", got, err)
	}
	byID, err := s.ImageByID(ctx, "img-c")
	if err != nil || byID.ServerID != "c" {
		t.Errorf("by id = %+v, %v", byID, err)
	}
	if _, err := s.ImageByID(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("unknown id: %v", err)
	}
}
