package store_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/imagekeeper/imagekeeper/store"
	"github.com/imagekeeper/imagekeeper/store/storetest"
)

// The tables in this file pin the lineage's state machines down transition by
// transition: for every state a row can be in and every operation of the store,
// the state the operation leaves it in, or the refusal (ErrConflict, with the row
// and the audit untouched). A transition added, dropped or widened in the store
// fails one of the subtests, named "<from>/<Operation>".

// transitionSlot is the slot instant of every fixture row; rows differ by server.
var transitionSlot = time.Date(2026, 11, 30, 2, 30, 0, 0, time.UTC)

// imageFixture is a named starting point of the image state machine: a row brought
// into one state by the store's own transitions (never by SQL), since what an
// operation allows can depend on more than the state (an image id, the failure
// kind, whether the row was ever active).
type imageFixture struct {
	name string
	// state is the state the fixture leaves the row in.
	state store.ImageState
	make  makeRow
}

// must takes a call's (value, error) and returns a function that fails the test
// on the error and returns the value: must(s.Image(ctx, row))(t).
func must[T any](v T, err error) func(testing.TB) T {
	return func(tb testing.TB) T {
		tb.Helper()
		if err != nil {
			tb.Fatal(err)
		}
		return v
	}
}

func intent(t *testing.T, s *store.Store, server string) store.Image {
	t.Helper()
	im, _, err := s.RecordIntent(context.Background(), store.Intent{Policy: "p", ServerID: server, Slot: transitionSlot,
		Name: "img-" + server})
	return must(im, err)(t)
}

// makeRow is how a fixture makes its row; server keeps the rows of one store apart.
type makeRow func(t *testing.T, s *store.Store, server string) store.Image

// path makes a row by an intent and then the named operations of imageOps in turn:
// a fixture is reached only by the transitions under test.
func path(ops ...string) makeRow {
	return func(t *testing.T, s *store.Store, server string) store.Image {
		t.Helper()
		im := intent(t, s, server)
		for _, name := range ops {
			i := slices.IndexFunc(imageOps, func(op imageOp) bool { return op.name == name })
			if i < 0 {
				t.Fatalf("no operation %s", name)
			}
			im = must(imageOps[i].do(context.Background(), s, im.Row))(t)
		}
		return im
	}
}

// late is the late window of a timed-out row and the next look at a protected
// one: far ahead of the test clock.
var late = transitionSlot.Add(24 * time.Hour)

var (
	creating = path("SetImageID")
	good     = path("SetImageID", "MarkGood")
)

var imageFixtures = []imageFixture{
	{"requested", store.ImageRequested, intent},
	{"creating", store.ImageCreating, creating},
	{"good", store.ImageGood, good},
	// Failed before Nova gave an id: a later attempt may call createImage again.
	{"failed", store.ImageFailed, path("MarkFailed")},
	{"failed_with_id", store.ImageFailed, path("SetImageID", "MarkFailed")},
	{"timed_out", store.ImageFailed, path("SetImageID", "MarkTimedOut")},
	{"hollow", store.ImageFailed, path("SetImageID", "MarkGood", "MarkHollow")},
	{"deleting", store.ImageDeleting, path("SetImageID", "MarkGood", "BeginDeletion")},
	{"kept_protected_good", store.ImageKeptProtected, path("SetImageID", "MarkGood", "BeginDeletion", "KeepProtected")},
	{"kept_protected_failed", store.ImageKeptProtected, path("SetImageID", "MarkFailed", "BeginDeletion", "KeepProtected")},
	{"deleted", store.ImageDeleted, path("SetImageID", "MarkGood", "BeginDeletion", "MarkDeleted")},
}

// fixture returns the maker of the named image fixture.
func fixture(name string) makeRow {
	for _, f := range imageFixtures {
		if f.name == name {
			return f.make
		}
	}
	panic("no image fixture " + name)
}

// rowDropped is the "state" of a row that an operation deleted (DropIntent).
const rowDropped store.ImageState = "(row dropped)"

// imageOp is one operation of the image state machine.
type imageOp struct {
	name string
	do   func(ctx context.Context, s *store.Store, row int64) (store.Image, error)
	// event is the kind of the one audit event an allowed transition writes.
	event string
	// allowed maps each fixture the operation accepts to the state it leaves the
	// row in; every other fixture is refused with ErrConflict.
	allowed map[string]store.ImageState
	// check, when set, tests more of an allowed transition's result.
	check func(t *testing.T, before, after store.Image)
}

var imageOps = []imageOp{
	{name: "BeginAttempt", event: store.EventCreateAttempt,
		do: func(ctx context.Context, s *store.Store, row int64) (store.Image, error) {
			return s.BeginAttempt(ctx, row, "retry-name", map[string]string{"k": "v"})
		},
		// Only rows without an image id: a row with one must never call createImage again.
		allowed: map[string]store.ImageState{"requested": store.ImageRequested, "failed": store.ImageRequested},
		check: func(t *testing.T, before, after store.Image) {
			if after.Attempts != before.Attempts+1 || after.Name != "retry-name" || after.Reason != "" || !after.FailedAt.IsZero() {
				t.Errorf("after BeginAttempt: attempts %d (was %d), name %q, reason %q, failed_at %v",
					after.Attempts, before.Attempts, after.Name, after.Reason, after.FailedAt)
			}
		}},
	{name: "SetImageID", event: store.EventImageCreating,
		do: func(ctx context.Context, s *store.Store, row int64) (store.Image, error) {
			return s.SetImageID(ctx, row, fmt.Sprintf("new-image-%d", row), false, "created")
		},
		allowed: map[string]store.ImageState{"requested": store.ImageCreating, "failed": store.ImageCreating,
			"failed_with_id": store.ImageCreating, "timed_out": store.ImageCreating, "hollow": store.ImageCreating},
		check: func(t *testing.T, before, after store.Image) {
			if after.ImageID != fmt.Sprintf("new-image-%d", before.Row) || after.CreatedAt.IsZero() || !after.FailedAt.IsZero() {
				t.Errorf("after SetImageID: id %q, created_at %v, failed_at %v", after.ImageID, after.CreatedAt, after.FailedAt)
			}
		}},
	{name: "MarkGood", event: store.EventImageGood,
		do: func(ctx context.Context, s *store.Store, row int64) (store.Image, error) {
			return s.MarkGood(ctx, row, store.Good{SizeBytes: 42, AZ: "az-2"})
		},
		allowed: map[string]store.ImageState{"creating": store.ImageGood},
		check: func(t *testing.T, _, after store.Image) {
			if after.SizeBytes != 42 || after.AZ != "az-2" || after.ActiveAt.IsZero() {
				t.Errorf("after MarkGood: size %d, az %q, active_at %v", after.SizeBytes, after.AZ, after.ActiveAt)
			}
		}},
	{name: "MarkFailed", event: store.EventImageFailed,
		do: func(ctx context.Context, s *store.Store, row int64) (store.Image, error) {
			return s.MarkFailed(ctx, row, "went to error")
		},
		allowed: map[string]store.ImageState{"requested": store.ImageFailed, "creating": store.ImageFailed},
		check: func(t *testing.T, _, after store.Image) {
			if after.Reason != "went to error" || after.FailedAt.IsZero() || after.Failure != store.FailureOther {
				t.Errorf("after MarkFailed: reason %q, failed_at %v, failure %q", after.Reason, after.FailedAt, after.Failure)
			}
		}},
	{name: "MarkTimedOut", event: store.EventImageFailed,
		do: func(ctx context.Context, s *store.Store, row int64) (store.Image, error) {
			return s.MarkTimedOut(ctx, row, "not good within wait_timeout", late)
		},
		allowed: map[string]store.ImageState{"creating": store.ImageFailed},
		check: func(t *testing.T, _, after store.Image) {
			if after.Failure != store.FailureTimeout || !after.LateUntil.Equal(late) || after.FailedAt.IsZero() {
				t.Errorf("after MarkTimedOut: failure %q, late_until %v, failed_at %v", after.Failure, after.LateUntil, after.FailedAt)
			}
		}},
	{name: "MarkLateGood", event: store.EventImageLateGood,
		do: func(ctx context.Context, s *store.Store, row int64) (store.Image, error) {
			return s.MarkLateGood(ctx, row, store.Good{SizeBytes: 7})
		},
		// Only a failure by timeout may turn good: a final failure or a hollow image never does.
		allowed: map[string]store.ImageState{"timed_out": store.ImageGood},
		check: func(t *testing.T, _, after store.Image) {
			if after.Failure != "" || !after.LateUntil.IsZero() || !after.FailedAt.IsZero() || after.ActiveAt.IsZero() {
				t.Errorf("after MarkLateGood: failure %q, late_until %v, failed_at %v, active_at %v",
					after.Failure, after.LateUntil, after.FailedAt, after.ActiveAt)
			}
		}},
	{name: "EndLateWatch", event: store.EventImageFailed,
		do: func(ctx context.Context, s *store.Store, row int64) (store.Image, error) {
			return s.EndLateWatch(ctx, row, "image went to error after the timeout")
		},
		allowed: map[string]store.ImageState{"failed": store.ImageFailed, "failed_with_id": store.ImageFailed,
			"timed_out": store.ImageFailed, "hollow": store.ImageFailed},
		check: func(t *testing.T, before, after store.Image) {
			if !after.LateUntil.IsZero() || after.Failure != before.Failure || after.Reason != "image went to error after the timeout" {
				t.Errorf("after EndLateWatch: late_until %v, failure %q (was %q), reason %q",
					after.LateUntil, after.Failure, before.Failure, after.Reason)
			}
		}},
	{name: "MarkHollow", event: store.EventImageHollow,
		do: func(ctx context.Context, s *store.Store, row int64) (store.Image, error) {
			return s.MarkHollow(ctx, row, "snapshot went to error")
		},
		allowed: map[string]store.ImageState{"good": store.ImageFailed},
		check: func(t *testing.T, _, after store.Image) {
			if after.Failure != store.FailureHollow || after.FailedAt.IsZero() || after.Reason != "hollow: snapshot went to error" {
				t.Errorf("after MarkHollow: failure %q, failed_at %v, reason %q", after.Failure, after.FailedAt, after.Reason)
			}
		}},
	{name: "NoteImage", event: "test_note",
		do: func(ctx context.Context, s *store.Store, row int64) (store.Image, error) {
			return s.NoteImage(ctx, row, "test_note", "looking for our stamped image")
		},
		// A note changes no state, in every state.
		allowed: map[string]store.ImageState{"requested": store.ImageRequested, "creating": store.ImageCreating,
			"good": store.ImageGood, "failed": store.ImageFailed, "failed_with_id": store.ImageFailed,
			"timed_out": store.ImageFailed, "hollow": store.ImageFailed, "deleting": store.ImageDeleting,
			"kept_protected_good": store.ImageKeptProtected, "kept_protected_failed": store.ImageKeptProtected,
			"deleted": store.ImageDeleted},
		check: func(t *testing.T, _, after store.Image) {
			if after.Reason != "looking for our stamped image" {
				t.Errorf("after NoteImage: reason %q", after.Reason)
			}
		}},
	{name: "DropIntent", event: store.EventIntentDropped,
		do: func(ctx context.Context, s *store.Store, row int64) (store.Image, error) {
			return store.Image{State: rowDropped}, s.DropIntent(ctx, row, "server busy (409): no image was made")
		},
		allowed: map[string]store.ImageState{"requested": rowDropped}},
	{name: "BeginDeletion", event: store.EventImageDeleting,
		do: func(ctx context.Context, s *store.Store, row int64) (store.Image, error) {
			return s.BeginDeletion(ctx, row, "no rule keeps it")
		},
		// Nothing still being made, and nothing already in the journal.
		allowed: map[string]store.ImageState{"good": store.ImageDeleting, "failed": store.ImageDeleting,
			"failed_with_id": store.ImageDeleting, "timed_out": store.ImageDeleting, "hollow": store.ImageDeleting},
		check: func(t *testing.T, _, after store.Image) {
			if after.DeleteReason != "no rule keeps it" || after.DeletingAt.IsZero() || !after.NextAttemptAt.IsZero() {
				t.Errorf("after BeginDeletion: reason %q, deleting_at %v, next %v", after.DeleteReason, after.DeletingAt, after.NextAttemptAt)
			}
		}},
	{name: "DeferDeletion", event: store.EventImageDeleteDefer,
		do: func(ctx context.Context, s *store.Store, row int64) (store.Image, error) {
			return s.DeferDeletion(ctx, row, "cloud answered 503", late)
		},
		allowed: map[string]store.ImageState{"deleting": store.ImageDeleting},
		check: func(t *testing.T, before, after store.Image) {
			if after.DeleteAttempts != before.DeleteAttempts+1 || after.LastError != "cloud answered 503" || !after.NextAttemptAt.Equal(late) {
				t.Errorf("after DeferDeletion: attempts %d (was %d), last error %q, next %v",
					after.DeleteAttempts, before.DeleteAttempts, after.LastError, after.NextAttemptAt)
			}
		}},
	{name: "KeepProtected", event: store.EventImageProtected,
		do: func(ctx context.Context, s *store.Store, row int64) (store.Image, error) {
			return s.KeepProtected(ctx, row, "protected (HTTP 403)", late.Add(time.Hour))
		},
		allowed: map[string]store.ImageState{"deleting": store.ImageKeptProtected,
			"kept_protected_good": store.ImageKeptProtected, "kept_protected_failed": store.ImageKeptProtected},
		check: func(t *testing.T, before, after store.Image) {
			if after.Reason != before.Reason || after.LastError != "protected (HTTP 403)" || !after.NextAttemptAt.Equal(late.Add(time.Hour)) {
				t.Errorf("after KeepProtected: reason %q (was %q), last error %q, next %v",
					after.Reason, before.Reason, after.LastError, after.NextAttemptAt)
			}
		}},
	{name: "ReleaseProtected", event: store.EventImageReleased,
		do: func(ctx context.Context, s *store.Store, row int64) (store.Image, error) {
			return s.ReleaseProtected(ctx, row, "no longer protected")
		},
		// Back to what it was: good if it was ever good, failed otherwise.
		allowed: map[string]store.ImageState{"kept_protected_good": store.ImageGood, "kept_protected_failed": store.ImageFailed},
		check: func(t *testing.T, _, after store.Image) {
			if !after.NextAttemptAt.IsZero() || after.LastError != "" {
				t.Errorf("after ReleaseProtected: next %v, last error %q", after.NextAttemptAt, after.LastError)
			}
		}},
	{name: "MarkDeleted", event: store.EventImageDeleted,
		do: func(ctx context.Context, s *store.Store, row int64) (store.Image, error) {
			return s.MarkDeleted(ctx, row, "image gone")
		},
		allowed: map[string]store.ImageState{"deleting": store.ImageDeleted},
		check: func(t *testing.T, _, after store.Image) {
			if after.DeletedAt.IsZero() || !after.NextAttemptAt.IsZero() {
				t.Errorf("after MarkDeleted: deleted_at %v, next %v", after.DeletedAt, after.NextAttemptAt)
			}
		}},
	{name: "MarkGone", event: store.EventImageGone,
		do: func(ctx context.Context, s *store.Store, row int64) (store.Image, error) {
			return s.MarkGone(ctx, row, "image gone from the cloud")
		},
		allowed: map[string]store.ImageState{"good": store.ImageFailed, "kept_protected_good": store.ImageFailed,
			"kept_protected_failed": store.ImageFailed},
		check: func(t *testing.T, _, after store.Image) {
			if after.Reason != "image gone from the cloud" || after.FailedAt.IsZero() {
				t.Errorf("after MarkGone: reason %q, failed_at %v", after.Reason, after.FailedAt)
			}
		}},
}

// rowEvents returns the kinds of the audit events of an image row, oldest first.
func rowEvents(t *testing.T, s *store.Store, row int64) []string {
	t.Helper()
	evs := must(s.Events(context.Background(), store.EventFilter{ImageRow: row}))(t)
	kinds := make([]string, len(evs))
	for i, e := range evs {
		kinds[i] = e.Kind
	}
	return kinds
}

// TestImageTransitions runs every operation of the image state machine from every
// fixture state: an allowed pair moves the row to the expected state with exactly
// one audit event of the operation's kind; a refused pair answers ErrConflict and
// leaves the row and its audit as they were.
func TestImageTransitions(t *testing.T) {
	clock := storetest.NewClock(transitionSlot.Add(time.Minute))
	s := storetest.MustOpen(t, clock)
	ctx := context.Background()
	for _, op := range imageOps {
		for name := range op.allowed {
			if !slices.ContainsFunc(imageFixtures, func(f imageFixture) bool { return f.name == name }) {
				t.Fatalf("%s allows unknown fixture %q", op.name, name)
			}
		}
		for _, fx := range imageFixtures {
			want, allowed := op.allowed[fx.name]
			verdict := "refused"
			if allowed {
				verdict = "to_" + string(want)
			}
			t.Run(fx.name+"/"+op.name+"/"+verdict, func(t *testing.T) {
				before := fx.make(t, s, fx.name+"-"+op.name)
				if before.State != fx.state {
					t.Fatalf("fixture %s made a %s row, want %s", fx.name, before.State, fx.state)
				}
				evBefore := rowEvents(t, s, before.Row)
				clock.Advance(time.Second) // so that a refused op that wrote anything would show in updated_at
				got, err := op.do(ctx, s, before.Row)
				evAfter := rowEvents(t, s, before.Row)
				if !allowed {
					if !errors.Is(err, store.ErrConflict) {
						t.Fatalf("%s of a %s row: err = %v, want ErrConflict", op.name, fx.name, err)
					}
					if after := must(s.Image(ctx, before.Row))(t); !reflect.DeepEqual(after, before) {
						t.Errorf("refused %s changed the row:\nbefore %+v\nafter  %+v", op.name, before, after)
					}
					if !slices.Equal(evAfter, evBefore) {
						t.Errorf("refused %s wrote events: %v -> %v", op.name, evBefore, evAfter)
					}
					return
				}
				if err != nil {
					t.Fatalf("%s of a %s row: %v", op.name, fx.name, err)
				}
				if got.State != want {
					t.Errorf("%s of a %s row returned state %s, want %s", op.name, fx.name, got.State, want)
				}
				if want == rowDropped {
					if _, err := s.Image(ctx, before.Row); !errors.Is(err, store.ErrNotFound) {
						t.Errorf("dropped row still readable: %v", err)
					}
				} else {
					after := must(s.Image(ctx, before.Row))(t)
					if after.State != want || !reflect.DeepEqual(after, got) {
						t.Errorf("stored row differs from the returned one:\nreturned %+v\nstored   %+v", got, after)
					}
					if !after.UpdatedAt.Equal(clock.Now()) {
						t.Errorf("updated_at = %v, want the clock's %v", after.UpdatedAt, clock.Now())
					}
					if op.check != nil {
						op.check(t, before, after)
					}
				}
				if len(evAfter) != len(evBefore)+1 || evAfter[len(evAfter)-1] != op.event {
					t.Errorf("%s wrote events %v after %v, want exactly one %s", op.name, evAfter[len(evBefore):], evBefore, op.event)
				}
			})
		}
	}
}

// TestImageTransitionsOfAMissingRow: every operation on a row that does not exist
// answers ErrNotFound, never ErrConflict, so a caller can tell a lost row from a
// refused step.
func TestImageTransitionsOfAMissingRow(t *testing.T) {
	s := storetest.MustOpen(t, storetest.NewClock(transitionSlot))
	for _, op := range imageOps {
		t.Run("missing/"+op.name, func(t *testing.T) {
			if _, err := op.do(context.Background(), s, 4242); !errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrConflict) {
				t.Fatalf("%s of a missing row: %v, want ErrNotFound", op.name, err)
			}
		})
	}
}

// TestImageTransitionGuards covers the refusals that depend on the snapshots behind
// an image rather than on the row's state: a good image is a complete backup, a
// deleted row has nothing left behind it, and a dropped intent had nothing made.
func TestImageTransitionGuards(t *testing.T) {
	clock := storetest.NewClock(transitionSlot.Add(time.Minute))
	s := storetest.MustOpen(t, clock)
	ctx := context.Background()
	withSnapshot := func(t *testing.T, im store.Image, state store.SnapshotState) {
		t.Helper()
		if err := s.AddSnapshots(ctx, im.Row, []store.Snapshot{{SnapshotID: fmt.Sprintf("snap-%d", im.Row), State: state}}); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name string
		// make builds the row; snap is the state of the one snapshot behind it.
		make makeRow
		snap store.SnapshotState
		op   func(row int64) (store.Image, error)
		// want is the resulting state; "" for a refusal (ErrConflict).
		want store.ImageState
	}{
		{"creating/MarkGood/snapshot_available", creating, store.SnapshotAvailable,
			func(row int64) (store.Image, error) { return s.MarkGood(ctx, row, store.Good{}) }, store.ImageGood},
		{"creating/MarkGood/snapshot_creating", creating, store.SnapshotCreating,
			func(row int64) (store.Image, error) { return s.MarkGood(ctx, row, store.Good{}) }, ""},
		{"creating/MarkGood/snapshot_error", creating, store.SnapshotError,
			func(row int64) (store.Image, error) { return s.MarkGood(ctx, row, store.Good{}) }, ""},
		{"creating/MarkGood/snapshot_missing", creating, store.SnapshotMissing,
			func(row int64) (store.Image, error) { return s.MarkGood(ctx, row, store.Good{}) }, ""},
		{"timed_out/MarkLateGood/snapshot_available", fixture("timed_out"), store.SnapshotAvailable,
			func(row int64) (store.Image, error) { return s.MarkLateGood(ctx, row, store.Good{}) }, store.ImageGood},
		{"timed_out/MarkLateGood/snapshot_creating", fixture("timed_out"), store.SnapshotCreating,
			func(row int64) (store.Image, error) { return s.MarkLateGood(ctx, row, store.Good{}) }, ""},
		{"deleting/MarkDeleted/snapshot_deleted", fixture("deleting"), store.SnapshotDeleted,
			func(row int64) (store.Image, error) { return s.MarkDeleted(ctx, row, "gone") }, store.ImageDeleted},
		{"deleting/MarkDeleted/snapshot_deleting", fixture("deleting"), store.SnapshotDeleting,
			func(row int64) (store.Image, error) { return s.MarkDeleted(ctx, row, "gone") }, ""},
		{"deleting/MarkDeleted/snapshot_kept_in_use", fixture("deleting"), store.SnapshotKeptInUse,
			func(row int64) (store.Image, error) { return s.MarkDeleted(ctx, row, "gone") }, ""},
		{"deleting/MarkDeleted/snapshot_missing", fixture("deleting"), store.SnapshotMissing,
			func(row int64) (store.Image, error) { return s.MarkDeleted(ctx, row, "gone") }, ""},
		{"requested/DropIntent/with_snapshot", intent, store.SnapshotCreating,
			func(row int64) (store.Image, error) {
				return store.Image{State: rowDropped}, s.DropIntent(ctx, row, "busy")
			}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			im := tc.make(t, s, tc.name)
			withSnapshot(t, im, tc.snap)
			before := must(s.Image(ctx, im.Row))(t)
			got, err := tc.op(im.Row)
			if tc.want == "" {
				if !errors.Is(err, store.ErrConflict) {
					t.Fatalf("err = %v, want ErrConflict", err)
				}
				if after := must(s.Image(ctx, im.Row))(t); !reflect.DeepEqual(after, before) {
					t.Errorf("refused step changed the row:\nbefore %+v\nafter  %+v", before, after)
				}
				return
			}
			if err != nil || got.State != tc.want {
				t.Fatalf("state %s, err %v; want %s", got.State, err, tc.want)
			}
		})
	}
	t.Run("arguments/SetImageID_BeginDeletion/plain_error", func(t *testing.T) {
		// An empty id or deletion reason is a caller's bug, refused before the row is
		// read: not a state conflict.
		im := intent(t, s, "empty-id")
		if _, err := s.SetImageID(ctx, im.Row, "", false, "x"); err == nil || errors.Is(err, store.ErrConflict) {
			t.Fatalf("SetImageID with an empty id: %v, want a plain error", err)
		}
		if _, err := s.BeginDeletion(ctx, good(t, s, "empty-reason").Row, ""); err == nil || errors.Is(err, store.ErrConflict) {
			t.Fatalf("BeginDeletion with an empty reason: %v, want a plain error", err)
		}
	})
}

// snapshotSteps are the states RecordSnapshotStep moves a snapshot to; "" keeps it.
var snapshotSteps = []store.SnapshotState{"", store.SnapshotDeleting, store.SnapshotDeleted, store.SnapshotKeptInUse,
	store.SnapshotErrorDeleting}

// allSnapshotStates lists every snapshot state, in the order of the schema's CHECK.
var allSnapshotStates = []store.SnapshotState{store.SnapshotCreating, store.SnapshotAvailable, store.SnapshotError,
	store.SnapshotMissing, store.SnapshotDeleting, store.SnapshotDeleted, store.SnapshotKeptInUse, store.SnapshotErrorDeleting}

// TestSnapshotDeletionSteps runs every deletion step from every snapshot state. The
// journal's one refusal: a snapshot confirmed deleted never comes back (it may only
// be recorded deleted again). Every other step is taken, stamps deleting_at and
// deleted_at once, and writes one snapshot_delete event.
func TestSnapshotDeletionSteps(t *testing.T) {
	clock := storetest.NewClock(transitionSlot.Add(time.Minute))
	s := storetest.MustOpen(t, clock)
	ctx := context.Background()
	for _, from := range allSnapshotStates {
		for _, to := range snapshotSteps {
			want := to
			if to == "" {
				want = from
			}
			refused := from == store.SnapshotDeleted && want != store.SnapshotDeleted
			verdict := "to_" + string(want)
			if refused {
				verdict = "refused"
			}
			step := "RecordSnapshotStep(" + string(to) + ")"
			if to == "" {
				step = "RecordSnapshotStep(keep)"
			}
			t.Run(string(from)+"/"+step+"/"+verdict, func(t *testing.T) {
				im := good(t, s, fmt.Sprintf("snap-%s-%s", from, to))
				id := fmt.Sprintf("snap-%d", im.Row)
				if err := s.AddSnapshots(ctx, im.Row, []store.Snapshot{{SnapshotID: id, State: from}}); err != nil {
					t.Fatal(err)
				}
				before := must(s.SnapshotByID(ctx, id))(t)
				evBefore := rowEvents(t, s, im.Row)
				clock.Advance(time.Second)
				got, err := s.RecordSnapshotStep(ctx, id, store.SnapshotStep{State: to, Reason: "step", Attempt: true})
				evAfter := rowEvents(t, s, im.Row)
				if refused {
					if !errors.Is(err, store.ErrConflict) {
						t.Fatalf("err = %v, want ErrConflict", err)
					}
					if after := must(s.SnapshotByID(ctx, id))(t); !reflect.DeepEqual(after, before) || !slices.Equal(evAfter, evBefore) {
						t.Errorf("refused step changed the snapshot or the audit:\nbefore %+v\nafter  %+v", before, after)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				if got.State != want || got.DeleteAttempts != before.DeleteAttempts+1 {
					t.Errorf("state %s, attempts %d; want %s, %d", got.State, got.DeleteAttempts, want, before.DeleteAttempts+1)
				}
				// The fixtures start with neither stamp: a step stamps the one of its state.
				if (want == store.SnapshotDeleting) != !got.DeletingAt.IsZero() {
					t.Errorf("deleting_at = %v for a step to %s", got.DeletingAt, want)
				}
				if (want == store.SnapshotDeleted) != !got.DeletedAt.IsZero() {
					t.Errorf("deleted_at = %v for a step to %s", got.DeletedAt, want)
				}
				if len(evAfter) != len(evBefore)+1 || evAfter[len(evAfter)-1] != store.EventSnapshotDeleteStep {
					t.Errorf("events %v after %v, want one %s", evAfter[len(evBefore):], evBefore, store.EventSnapshotDeleteStep)
				}
			})
		}
	}
	t.Run("missing/RecordSnapshotStep", func(t *testing.T) {
		if _, err := s.RecordSnapshotStep(ctx, "no-such-snapshot", store.SnapshotStep{State: store.SnapshotDeleted}); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("err = %v, want ErrNotFound", err)
		}
	})
	t.Run("deleting/RecordSnapshotStep(poll)/no_event", func(t *testing.T) {
		// A snapshot polled while it stays deleting, with nothing new, does not flood the audit.
		im := good(t, s, "poll")
		id := fmt.Sprintf("snap-%d", im.Row)
		if err := s.AddSnapshots(ctx, im.Row, []store.Snapshot{{SnapshotID: id, State: store.SnapshotDeleting}}); err != nil {
			t.Fatal(err)
		}
		evBefore := rowEvents(t, s, im.Row)
		if _, err := s.RecordSnapshotStep(ctx, id, store.SnapshotStep{}); err != nil {
			t.Fatal(err)
		}
		if evAfter := rowEvents(t, s, im.Row); !slices.Equal(evAfter, evBefore) {
			t.Errorf("an unchanged poll wrote events: %v -> %v", evBefore, evAfter)
		}
	})
}

// creationStates are the snapshot states a wait (UpdateSnapshot) records while an
// image is being made.
var creationStates = []store.SnapshotState{store.SnapshotCreating, store.SnapshotAvailable, store.SnapshotError,
	store.SnapshotMissing}

// TestSnapshotCreationUpdates runs UpdateSnapshot, the waits' write, between every
// pair of creation states (and "" for a poll that learned no state). It has no
// refusal: it records what Cinder says. An event is written only when the state
// changes, and available_at is stamped the first time the snapshot is available.
func TestSnapshotCreationUpdates(t *testing.T) {
	clock := storetest.NewClock(transitionSlot.Add(time.Minute))
	s := storetest.MustOpen(t, clock)
	ctx := context.Background()
	for _, from := range creationStates {
		for _, to := range append([]store.SnapshotState{""}, creationStates...) {
			want := to
			if to == "" {
				want = from
			}
			name := string(to)
			if to == "" {
				name = "poll"
			}
			t.Run(string(from)+"/UpdateSnapshot("+name+")/to_"+string(want), func(t *testing.T) {
				im := creating(t, s, fmt.Sprintf("update-%s-%s", from, name))
				id := fmt.Sprintf("snap-%d", im.Row)
				if err := s.AddSnapshots(ctx, im.Row, []store.Snapshot{{SnapshotID: id, State: from}}); err != nil {
					t.Fatal(err)
				}
				before := must(s.SnapshotByID(ctx, id))(t)
				evBefore := rowEvents(t, s, im.Row)
				clock.Advance(time.Second)
				got, err := s.UpdateSnapshot(ctx, id, store.SnapshotUpdate{State: to, VolumeID: "vol-1", SizeGB: 3})
				if err != nil {
					t.Fatal(err)
				}
				stored := must(s.SnapshotByID(ctx, id))(t)
				if got.State != want || !reflect.DeepEqual(got, stored) || got.VolumeID != "vol-1" || got.SizeGB != 3 {
					t.Errorf("returned %+v\nstored   %+v\nwant state %s, volume vol-1, 3 GB", got, stored, want)
				}
				switch {
				case from == store.SnapshotAvailable && !got.AvailableAt.Equal(before.AvailableAt):
					t.Errorf("available_at moved from %v to %v", before.AvailableAt, got.AvailableAt)
				case from != store.SnapshotAvailable && (want == store.SnapshotAvailable) != !got.AvailableAt.IsZero():
					t.Errorf("available_at = %v after a step to %s", got.AvailableAt, want)
				}
				evAfter := rowEvents(t, s, im.Row)
				if wantEvents := len(evBefore) + map[bool]int{true: 1}[want != from]; len(evAfter) != wantEvents ||
					(want != from && evAfter[len(evAfter)-1] != store.EventSnapshotState) {
					t.Errorf("events %v after %v: want %d, the last %s", evAfter, evBefore, wantEvents, store.EventSnapshotState)
				}
			})
		}
	}
	t.Run("missing/UpdateSnapshot", func(t *testing.T) {
		if _, err := s.UpdateSnapshot(ctx, "no-such-snapshot", store.SnapshotUpdate{State: store.SnapshotAvailable}); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("err = %v, want ErrNotFound", err)
		}
	})
	t.Run("available/UpdateSnapshot(unchanged)/no_write", func(t *testing.T) {
		im := creating(t, s, "update-unchanged")
		id := fmt.Sprintf("snap-%d", im.Row)
		if err := s.AddSnapshots(ctx, im.Row, []store.Snapshot{{SnapshotID: id, State: store.SnapshotAvailable, VolumeID: "v"}}); err != nil {
			t.Fatal(err)
		}
		before := must(s.SnapshotByID(ctx, id))(t)
		clock.Advance(time.Second)
		got, err := s.UpdateSnapshot(ctx, id, store.SnapshotUpdate{State: store.SnapshotAvailable, VolumeID: "v"})
		if err != nil || !reflect.DeepEqual(got, before) {
			t.Fatalf("a poll that learned nothing new: %+v, %v; want the row unchanged %+v", got, err, before)
		}
	})
}

// slotFixture is a named starting point of the slot ledger.
type slotFixture struct {
	name string
	// make returns the slot's id (0 when it makes no row).
	make func(t *testing.T, s *store.Store, sl store.Slot) int64
}

func startedSlot(t *testing.T, s *store.Store, sl store.Slot) int64 {
	t.Helper()
	return must(s.StartSlot(context.Background(), sl))(t).ID
}

func finishedSlot(outcome store.SlotOutcome) func(t *testing.T, s *store.Store, sl store.Slot) int64 {
	return func(t *testing.T, s *store.Store, sl store.Slot) int64 {
		t.Helper()
		id := startedSlot(t, s, sl)
		if err := s.FinishSlot(context.Background(), id, outcome, "", store.SlotCounts{Selected: 1, Good: 1}); err != nil {
			t.Fatal(err)
		}
		return id
	}
}

func recordedSlot(outcome store.SlotOutcome) func(t *testing.T, s *store.Store, sl store.Slot) int64 {
	return func(t *testing.T, s *store.Store, sl store.Slot) int64 {
		t.Helper()
		sl.Outcome, sl.Reason = outcome, "did not run"
		return must(s.RecordSlot(context.Background(), sl))(t).ID
	}
}

var slotFixtures = []slotFixture{
	{"none", func(*testing.T, *store.Store, store.Slot) int64 { return 0 }},
	{"running", startedSlot},
	{"ran", finishedSlot(store.OutcomeRan)},
	{"caught_up", finishedSlot(store.OutcomeCaughtUp)},
	{"failed", finishedSlot(store.OutcomeFailed)},
	{"empty", finishedSlot(store.OutcomeEmpty)},
	{"missed", recordedSlot(store.OutcomeMissed)},
	{"skipped_overlap", recordedSlot(store.OutcomeSkippedOverlap)},
}

// TestSlotTransitions runs the slot ledger's three writes from every slot state.
// StartSlot (a run, or a re-run of the same slot) always makes it running and counts
// the run; FinishSlot ends any existing row; RecordSlot writes a slot that did not
// run and refuses to overwrite one that has run or is running.
func TestSlotTransitions(t *testing.T) {
	s := storetest.MustOpen(t, storetest.NewClock(transitionSlot.Add(time.Minute)))
	ctx := context.Background()
	type result struct {
		outcome  store.SlotOutcome // "" for a refusal
		runs     int
		notFound bool
	}
	ops := []struct {
		name string
		do   func(sl store.Slot, id int64) error
		want map[string]result
	}{
		{"StartSlot", func(sl store.Slot, _ int64) error {
			sl.Trigger = store.TriggerManual
			_, err := s.StartSlot(ctx, sl)
			return err
		}, map[string]result{
			"none": {outcome: store.OutcomeRunning, runs: 1}, "running": {outcome: store.OutcomeRunning, runs: 2},
			"ran": {outcome: store.OutcomeRunning, runs: 2}, "caught_up": {outcome: store.OutcomeRunning, runs: 2},
			"failed": {outcome: store.OutcomeRunning, runs: 2}, "empty": {outcome: store.OutcomeRunning, runs: 2},
			"missed": {outcome: store.OutcomeRunning, runs: 1}, "skipped_overlap": {outcome: store.OutcomeRunning, runs: 1},
		}},
		{"FinishSlot", func(_ store.Slot, id int64) error {
			return s.FinishSlot(ctx, id, store.OutcomeFailed, "listing failed", store.SlotCounts{})
		}, map[string]result{
			"none": {notFound: true}, "running": {outcome: store.OutcomeFailed, runs: 1},
			"ran": {outcome: store.OutcomeFailed, runs: 1}, "caught_up": {outcome: store.OutcomeFailed, runs: 1},
			"failed": {outcome: store.OutcomeFailed, runs: 1}, "empty": {outcome: store.OutcomeFailed, runs: 1},
			"missed": {outcome: store.OutcomeFailed, runs: 0}, "skipped_overlap": {outcome: store.OutcomeFailed, runs: 0},
		}},
		{"RecordSlot", func(sl store.Slot, _ int64) error {
			sl.Outcome, sl.Reason = store.OutcomeMissed, "past max_lateness"
			_, err := s.RecordSlot(ctx, sl)
			return err
		}, map[string]result{
			"none": {outcome: store.OutcomeMissed}, "running": {}, "ran": {}, "caught_up": {}, "failed": {}, "empty": {},
			"missed": {outcome: store.OutcomeMissed}, "skipped_overlap": {outcome: store.OutcomeMissed},
		}},
	}
	n := 0
	for _, op := range ops {
		for _, fx := range slotFixtures {
			w, ok := op.want[fx.name]
			if !ok {
				t.Fatalf("%s has no expectation for %s", op.name, fx.name)
			}
			verdict := "to_" + string(w.outcome)
			switch {
			case w.notFound:
				verdict = "not_found"
			case w.outcome == "":
				verdict = "refused"
			}
			n++
			sl := store.Slot{Policy: "p", Slot: transitionSlot.Add(time.Duration(n) * time.Hour), Trigger: store.TriggerScheduled}
			t.Run(fx.name+"/"+op.name+"/"+verdict, func(t *testing.T) {
				id := fx.make(t, s, sl)
				var before store.Slot
				if id != 0 {
					before = must(s.SlotByKey(ctx, sl.Policy, sl.Slot))(t)
				}
				err := op.do(sl, id)
				switch {
				case w.notFound:
					if !errors.Is(err, store.ErrNotFound) {
						t.Fatalf("err = %v, want ErrNotFound", err)
					}
					return
				case w.outcome == "":
					if !errors.Is(err, store.ErrConflict) {
						t.Fatalf("err = %v, want ErrConflict", err)
					}
					if after := must(s.SlotByKey(ctx, sl.Policy, sl.Slot))(t); !reflect.DeepEqual(after, before) {
						t.Errorf("refused %s changed the slot:\nbefore %+v\nafter  %+v", op.name, before, after)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				after := must(s.SlotByKey(ctx, sl.Policy, sl.Slot))(t)
				if after.Outcome != w.outcome || after.Runs != w.runs {
					t.Errorf("outcome %s, runs %d; want %s, %d", after.Outcome, after.Runs, w.outcome, w.runs)
				}
				if (after.Outcome == store.OutcomeRunning) != after.FinishedAt.IsZero() {
					t.Errorf("outcome %s with finished_at %v", after.Outcome, after.FinishedAt)
				}
			})
		}
	}
}

// TestVocabularyMatchesSchema ties the Go constants to the schema's CHECK
// constraints both ways: every state and outcome the store defines can be stored,
// and a value outside them is refused by the database itself.
func TestVocabularyMatchesSchema(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "lineage.db")
	s := storetest.MustOpenAt(t, path, storetest.NewClock(transitionSlot))
	t.Run("SlotOutcome", func(t *testing.T) {
		outcomes := append([]store.SlotOutcome{store.OutcomeRunning}, store.FinalOutcomes...)
		for i, o := range append(outcomes, "bogus") {
			sl := must(s.StartSlot(ctx, store.Slot{Policy: "vocab", Slot: transitionSlot.Add(time.Duration(i) * time.Hour)}))(t)
			err := s.FinishSlot(ctx, sl.ID, o, "", store.SlotCounts{})
			if (err == nil) != (o != "bogus") {
				t.Errorf("FinishSlot(%q): %v", o, err)
			}
		}
		if len(store.FinalOutcomes) != 6 || slices.Contains(store.FinalOutcomes, store.OutcomeRunning) {
			t.Errorf("FinalOutcomes = %v: want the six final outcomes, not running", store.FinalOutcomes)
		}
	})
	t.Run("SnapshotState", func(t *testing.T) {
		im := good(t, s, "vocab")
		for _, st := range append(allSnapshotStates, "bogus") {
			err := s.AddSnapshots(ctx, im.Row, []store.Snapshot{{SnapshotID: "vocab-" + string(st), State: st}})
			if (err == nil) != (st != "bogus") {
				t.Errorf("AddSnapshots in state %q: %v", st, err)
			}
		}
	})
	t.Run("ImageState", func(t *testing.T) {
		im := good(t, s, "vocab-image")
		db, err := sql.Open("sqlite3", "file:"+path+"?_busy_timeout=5000")
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		states := make([]string, 0, len(store.ImageStates)+1)
		for _, st := range store.ImageStates {
			states = append(states, string(st))
		}
		sort.Strings(states)
		if got, want := len(store.ImageStates), 7; got != want {
			t.Errorf("%d image states, want %d", got, want)
		}
		for _, st := range append(states, "bogus") {
			_, err := db.Exec(`UPDATE images SET state = ? WHERE id = ?`, st, im.Row)
			if (err == nil) != (st != "bogus") {
				t.Errorf("state %q: %v", st, err)
			}
		}
		if !slices.Equal(store.LiveStates, slices.DeleteFunc(slices.Clone(store.ImageStates), func(st store.ImageState) bool {
			return st == store.ImageDeleted
		})) {
			t.Errorf("LiveStates = %v, want every image state but deleted", store.LiveStates)
		}
	})
}

// TestDrillJournalTransitions runs the drill journal's two closing writes from each
// of its states. The journal has no refusals: FinishDrill records a result (the row
// is then cleaning), MarkDrillCleaned closes a row as done, and a row closed without
// a result is recorded interrupted, on the journal only.
func TestDrillJournalTransitions(t *testing.T) {
	s := storetest.MustOpen(t, storetest.NewClock(transitionSlot))
	ctx := context.Background()
	type drillState struct{ state, result string }
	fixtures := []struct {
		name string
		// result is the FinishDrill result the fixture records; "" records none.
		result string
	}{{"booting", ""}, {"cleaning_ok", store.VerifyOK}, {"cleaning_failed", store.VerifyFailed}, {"cleaning_timeout", store.VerifyTimeout}}
	ops := []struct {
		name string
		do   func(d store.Drill) error
		want map[string]drillState
	}{
		{"FinishDrill(ok)", func(d store.Drill) error { return s.FinishDrill(ctx, d, store.VerifyOK, "") }, map[string]drillState{
			"booting": {store.DrillCleaning, store.VerifyOK}, "cleaning_ok": {store.DrillCleaning, store.VerifyOK},
			"cleaning_failed": {store.DrillCleaning, store.VerifyOK}, "cleaning_timeout": {store.DrillCleaning, store.VerifyOK},
		}},
		{"MarkDrillCleaned", func(d store.Drill) error { return s.MarkDrillCleaned(ctx, d) }, map[string]drillState{
			"booting": {store.DrillDone, store.VerifyInterrupted}, "cleaning_ok": {store.DrillDone, store.VerifyOK},
			"cleaning_failed": {store.DrillDone, store.VerifyFailed}, "cleaning_timeout": {store.DrillDone, store.VerifyTimeout},
		}},
	}
	for _, op := range ops {
		for _, fx := range fixtures {
			w := op.want[fx.name]
			t.Run(fx.name+"/"+op.name+"/to_"+w.state, func(t *testing.T) {
				im := good(t, s, "drill-"+fx.name+"-"+op.name)
				d := must(s.StartDrill(ctx, store.Drill{Policy: "p", ServerID: im.ServerID, ImageRow: im.Row,
					ImageID: im.ImageID, Token: fmt.Sprintf("tok-%d", im.Row)}))(t)
				if d.State != store.DrillBooting {
					t.Fatalf("StartDrill: state %s, want booting", d.State)
				}
				if fx.result != "" {
					if err := s.FinishDrill(ctx, d, fx.result, "detail"); err != nil {
						t.Fatal(err)
					}
				}
				verifiedBefore := must(s.Verification(ctx, im.Row))(t)
				if err := op.do(d); err != nil {
					t.Fatal(err)
				}
				got := must(s.DrillByToken(ctx, d.Token))(t)
				if got.State != w.state || got.Result != w.result {
					t.Errorf("drill %s/%s, want %s/%s", got.State, got.Result, w.state, w.result)
				}
				if (got.State == store.DrillDone) == got.FinishedAt.IsZero() {
					t.Errorf("drill %s with finished_at %v", got.State, got.FinishedAt)
				}
				open := must(s.OpenDrills(ctx))(t)
				if isOpen := slices.ContainsFunc(open, func(o store.Drill) bool { return o.ID == d.ID }); isOpen != (w.state != store.DrillDone) {
					t.Errorf("drill %s listed open = %v", got.State, isOpen)
				}
				// An interrupted drill says nothing about the image; a result is on its row.
				v := must(s.Verification(ctx, im.Row))(t)
				switch {
				case op.name == "MarkDrillCleaned" && v != verifiedBefore:
					t.Errorf("MarkDrillCleaned changed the image's verification: %+v -> %+v", verifiedBefore, v)
				case op.name != "MarkDrillCleaned" && v.Result != w.result:
					t.Errorf("image verification %q, want %q", v.Result, w.result)
				}
			})
		}
	}
}

// TestHookJournalTransitions: a hook row is open from StartHook until FinishHook
// closes it with a result, and only open rows are owed a post.
func TestHookJournalTransitions(t *testing.T) {
	s := storetest.MustOpen(t, storetest.NewClock(transitionSlot))
	ctx := context.Background()
	h := must(s.StartHook(ctx, store.HookRun{Policy: "p", ServerID: "srv", Slot: transitionSlot,
		PostArgv: []string{"thaw"}, PostTimeout: time.Minute}))(t)
	if h.State != store.HookOpen {
		t.Fatalf("StartHook: state %s, want open", h.State)
	}
	if open := must(s.OpenHooks(ctx))(t); len(open) != 1 || open[0].ID != h.ID || open[0].State != store.HookOpen {
		t.Fatalf("OpenHooks after StartHook = %+v", open)
	}
	// FinishHook has no refusal: a second one (a post retried at start-up) records its result.
	for _, tc := range []struct{ from, result string }{{"open", "ok"}, {"done", "ok again"}} {
		result := tc.result
		t.Run(tc.from+"/FinishHook/to_done", func(t *testing.T) {
			if err := s.FinishHook(ctx, h.ID, result); err != nil {
				t.Fatal(err)
			}
			runs := must(s.HookRuns(ctx, "p"))(t)
			if len(runs) != 1 || runs[0].State != store.HookDone || runs[0].Result != result {
				t.Errorf("HookRuns = %+v", runs)
			}
			if open := must(s.OpenHooks(ctx))(t); len(open) != 0 {
				t.Errorf("OpenHooks after FinishHook = %+v", open)
			}
		})
	}
}
