package store_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/imagekeeper/imagekeeper/store"
	"github.com/imagekeeper/imagekeeper/store/storetest"
)

// journalStore opens a fresh store on a fixed clock.
func journalStore(t *testing.T) *store.Store {
	t.Helper()
	return storetest.MustOpen(t, storetest.NewClock(time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)))
}

// goodImage makes a good row for (policy, server, slot) with the given snapshots,
// all available.
func goodImage(t *testing.T, s *store.Store, policy, server string, slot time.Time, snaps ...string) store.Image {
	t.Helper()
	ctx := context.Background()
	im, _, err := s.RecordIntent(ctx, store.Intent{Policy: policy, ServerID: server, Slot: slot, Name: "img-" + server,
		VolumeBacked: len(snaps) > 0})
	if err != nil {
		t.Fatal(err)
	}
	if im, err = s.SetImageID(ctx, im.Row, fmt.Sprintf("image-%s-%s-%d", policy, server, slot.Unix()), false, "created"); err != nil {
		t.Fatal(err)
	}
	var ss []store.Snapshot
	for _, id := range snaps {
		ss = append(ss, store.Snapshot{SnapshotID: id, VolumeID: "vol-" + id, State: store.SnapshotAvailable})
	}
	if err := s.AddSnapshots(ctx, im.Row, ss); err != nil {
		t.Fatal(err)
	}
	if im, err = s.MarkGood(ctx, im.Row, store.Good{SizeBytes: 1}); err != nil {
		t.Fatal(err)
	}
	return im
}

func TestDeletionJournalHappyPath(t *testing.T) {
	s := journalStore(t)
	ctx := context.Background()
	slot := time.Date(2026, 11, 24, 2, 30, 0, 0, time.UTC)
	im := goodImage(t, s, "daily", "srv-1", slot, "snap-a", "snap-b")

	if _, err := s.BeginDeletion(ctx, im.Row, ""); err == nil {
		t.Fatal("BeginDeletion with an empty reason succeeded")
	}
	got, err := s.BeginDeletion(ctx, im.Row, "no rule keeps it")
	if err != nil {
		t.Fatal(err)
	}
	if got.State != store.ImageDeleting || got.DeleteReason != "no rule keeps it" || got.DeletingAt.IsZero() {
		t.Fatalf("after BeginDeletion: state %s, reason %q, deleting_at %v", got.State, got.DeleteReason, got.DeletingAt)
	}
	// A second BeginDeletion is a conflict: the journal is already open.
	if _, err := s.BeginDeletion(ctx, im.Row, "again"); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("second BeginDeletion: %v, want ErrConflict", err)
	}
	// The row cannot become deleted while a snapshot is not confirmed gone.
	if _, err := s.MarkDeleted(ctx, im.Row, "done"); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("MarkDeleted with live snapshots: %v, want ErrConflict", err)
	}
	sn, err := s.RecordSnapshotStep(ctx, "snap-a", store.SnapshotStep{State: store.SnapshotDeleting, Attempt: true})
	if err != nil {
		t.Fatal(err)
	}
	if sn.State != store.SnapshotDeleting || sn.DeleteAttempts != 1 || sn.DeletingAt.IsZero() {
		t.Fatalf("snap-a after delete request: %+v", sn)
	}
	for _, id := range []string{"snap-a", "snap-b"} {
		if _, err := s.RecordSnapshotStep(ctx, id, store.SnapshotStep{State: store.SnapshotDeleted, Reason: "gone (404)"}); err != nil {
			t.Fatal(err)
		}
	}
	// A deleted snapshot cannot come back to life in the journal.
	if _, err := s.RecordSnapshotStep(ctx, "snap-a", store.SnapshotStep{State: store.SnapshotKeptInUse}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("reviving a deleted snapshot: %v, want ErrConflict", err)
	}
	got, err = s.MarkDeleted(ctx, im.Row, "image and 2 snapshots gone")
	if err != nil {
		t.Fatal(err)
	}
	if got.State != store.ImageDeleted || got.DeletedAt.IsZero() {
		t.Fatalf("after MarkDeleted: %s at %v", got.State, got.DeletedAt)
	}
	evs, err := s.Events(ctx, store.EventFilter{ImageRow: im.Row})
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, e := range evs {
		kinds = append(kinds, e.Kind)
	}
	want := []string{store.EventImageDeleting, store.EventSnapshotDeleteStep, store.EventSnapshotDeleteStep,
		store.EventSnapshotDeleteStep, store.EventImageDeleted}
	if fmt.Sprint(kinds[len(kinds)-len(want):]) != fmt.Sprint(want) {
		t.Fatalf("journal events = %v, want them to end with %v", kinds, want)
	}
}

func TestBeginDeletionRefusesRowsInFlight(t *testing.T) {
	s := journalStore(t)
	ctx := context.Background()
	im, _, err := s.RecordIntent(ctx, store.Intent{Policy: "p", ServerID: "s", Slot: time.Unix(1e9, 0), Name: "n"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.BeginDeletion(ctx, im.Row, "x"); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("BeginDeletion of a requested row: %v, want ErrConflict", err)
	}
}

func TestProtectedKeepAndRelease(t *testing.T) {
	s := journalStore(t)
	ctx := context.Background()
	good := goodImage(t, s, "p", "srv-good", time.Unix(1e9, 0))
	failed, _, err := s.RecordIntent(ctx, store.Intent{Policy: "p", ServerID: "srv-failed", Slot: time.Unix(1e9, 0), Name: "n"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetImageID(ctx, failed.Row, "image-failed", false, "created"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.MarkFailed(ctx, failed.Row, "snapshot error"); err != nil {
		t.Fatal(err)
	}
	next := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		row  int64
		back store.ImageState
	}{{good.Row, store.ImageGood}, {failed.Row, store.ImageFailed}} {
		if _, err := s.KeepProtected(ctx, tc.row, "protected", next); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("KeepProtected outside the journal: %v, want ErrConflict", err)
		}
		if _, err := s.BeginDeletion(ctx, tc.row, "no rule keeps it"); err != nil {
			t.Fatal(err)
		}
		im, err := s.KeepProtected(ctx, tc.row, "image is protected (HTTP 403)", next)
		if err != nil {
			t.Fatal(err)
		}
		if im.State != store.ImageKeptProtected || !im.NextAttemptAt.Equal(next) || im.LastError == "" {
			t.Fatalf("kept protected: state %s next %v last error %q", im.State, im.NextAttemptAt, im.LastError)
		}
		im, err = s.ReleaseProtected(ctx, tc.row, "no longer protected")
		if err != nil {
			t.Fatal(err)
		}
		if im.State != tc.back || !im.NextAttemptAt.IsZero() {
			t.Fatalf("released: state %s (want %s), next %v", im.State, tc.back, im.NextAttemptAt)
		}
	}
	im, err := s.Image(ctx, failed.Row)
	if err != nil {
		t.Fatal(err)
	}
	if im.Reason != "snapshot error" {
		t.Fatalf("failure reason after protect/release = %q, want it kept", im.Reason)
	}
}

func TestMarkGone(t *testing.T) {
	s := journalStore(t)
	ctx := context.Background()
	im := goodImage(t, s, "p", "srv", time.Unix(1e9, 0), "snap-1")
	got, err := s.MarkGone(ctx, im.Row, "image gone from the cloud")
	if err != nil {
		t.Fatal(err)
	}
	if got.State != store.ImageFailed || got.FailedAt.IsZero() || got.Reason != "image gone from the cloud" {
		t.Fatalf("after MarkGone: %+v", got)
	}
	if _, err := s.MarkGone(ctx, im.Row, "again"); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("MarkGone of a failed row: %v, want ErrConflict", err)
	}
	ls, err := s.LineageSnapshots(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(ls) != 1 || ls[0].SnapshotID != "snap-1" || ls[0].ImageState != store.ImageFailed || ls[0].ImageID != im.ImageID {
		t.Fatalf("LineageSnapshots = %+v", ls)
	}
	if _, err := s.RecordSnapshotStep(ctx, "snap-1", store.SnapshotStep{State: store.SnapshotDeleted}); err != nil {
		t.Fatal(err)
	}
	for _, all := range []bool{false, true} {
		ls, err := s.LineageSnapshots(ctx, all)
		if err != nil {
			t.Fatal(err)
		}
		if want := map[bool]int{false: 0, true: 1}[all]; len(ls) != want {
			t.Fatalf("LineageSnapshots(includeDeleted=%v) = %d rows, want %d", all, len(ls), want)
		}
	}
}

func TestLineageMatchesImages(t *testing.T) {
	s := journalStore(t)
	ctx := context.Background()
	base := time.Date(2028, 2, 29, 2, 30, 0, 123456789, time.FixedZone("CST", 8*3600))
	for i := range 5 {
		goodImage(t, s, "p", fmt.Sprintf("srv-%d", i%2), base.AddDate(0, 0, -i))
	}
	goodImage(t, s, "other", "srv-0", base)
	full, err := s.Images(ctx, store.ImageFilter{Policy: "p"})
	if err != nil {
		t.Fatal(err)
	}
	lean, err := s.Lineage(ctx, store.ImageFilter{Policy: "p"})
	if err != nil {
		t.Fatal(err)
	}
	if len(full) != 5 || len(lean) != len(full) {
		t.Fatalf("Images: %d rows, Lineage: %d rows, want 5 each", len(full), len(lean))
	}
	for i := range full {
		f, l := full[i], lean[i]
		if f.Row != l.Row || f.ImageID != l.ImageID || f.ServerID != l.ServerID || !f.Slot.Equal(l.Slot) ||
			f.State != l.State || !f.RequestedAt.Equal(l.RequestedAt) || !f.ActiveAt.Equal(l.ActiveAt) || f.Owner != l.Owner {
			t.Fatalf("row %d differs:\nImages:  %+v\nLineage: %+v", i, f, l)
		}
	}
	if lean[0].Owner != s.Owner() {
		t.Fatalf("owner %q, want %q", lean[0].Owner, s.Owner())
	}
}
