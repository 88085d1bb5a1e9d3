package store

import (
	"context"
	"errors"
	"fmt"
	"testing"
)

// TestCompactLineage moves deleted rows past the horizon (with their snapshot rows)
// to the archive, in batches, and leaves everything else: younger deleted rows,
// live rows, the audit. The archive answers for the moved images.
func TestCompactLineage(t *testing.T) {
	ctx := context.Background()
	f := newMetricsFixture(t)
	sl := f.slot("web", day(1, 2, 30), OutcomeRan, 1, 0)
	var old []int64
	for i := range compactBatch + 7 { // more than one batch
		old = append(old, f.image(sl, fmt.Sprintf("s%03d", i), "deleted", day(1, 2, 30)))
	}
	young := f.image(sl, "young", "deleted", day(1, 2, 30))
	live := f.image(sl, "live", "good", day(1, 2, 30))
	exec := func(q string, args ...any) {
		t.Helper()
		if _, err := f.s.db.Exec(q, args...); err != nil {
			t.Fatal(err)
		}
	}
	exec(`UPDATE images SET deleted_at = ?, delete_reason = 'keep_last 1' WHERE state = 'deleted'`, fmtTime(day(2, 0, 0)))
	exec(`UPDATE images SET deleted_at = ? WHERE id = ?`, fmtTime(day(20, 0, 0)), young)
	f.snapshot(old[0], "deleted")
	f.snapshot(old[0], "deleted")
	f.snapshot(live, "available")
	if _, err := f.s.AddEvent(ctx, Event{Kind: EventImageDeleted, Policy: "web", ImageRow: old[0], ImageID: "img-1", Message: "gone"}); err != nil {
		t.Fatal(err)
	}

	moved, err := f.s.CompactLineage(ctx, day(10, 0, 0))
	if err != nil || moved != len(old) {
		t.Fatalf("CompactLineage = %d, %v; want %d", moved, err, len(old))
	}
	for _, row := range old {
		if _, err := f.s.Image(ctx, row); !errors.Is(err, ErrNotFound) {
			t.Fatalf("row %d still in the lineage table: %v", row, err)
		}
	}
	for _, row := range []int64{young, live} {
		if _, err := f.s.Image(ctx, row); err != nil {
			t.Errorf("row %d was moved: %v", row, err)
		}
	}
	if snaps, err := f.s.Snapshots(ctx, live); err != nil || len(snaps) != 1 {
		t.Errorf("a live image's snapshots: %v, %v", snaps, err)
	}
	a, err := f.s.ArchivedImageByID(ctx, "img-1")
	if err != nil {
		t.Fatal(err)
	}
	if a.Row != old[0] || a.State != ImageDeleted || a.DeleteReason != "keep_last 1" || a.Policy != "web" ||
		!a.DeletedAt.Equal(day(2, 0, 0)) || len(a.Snapshots) != 2 || a.CompactedAt.IsZero() {
		t.Errorf("archived %+v", a)
	}
	if ev, err := f.s.Events(ctx, EventFilter{ImageRow: old[0]}); err != nil || len(ev) != 1 {
		t.Errorf("the audit of a compacted image: %v, %v", ev, err)
	}
	if _, err := f.s.ArchivedImageByID(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown image: %v", err)
	}
	if moved, err := f.s.CompactLineage(ctx, day(10, 0, 0)); err != nil || moved != 0 {
		t.Errorf("second pass moved %d, %v", moved, err)
	}
}
