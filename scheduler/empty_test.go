package scheduler

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/imagekeeper/imagekeeper/policy"
	"github.com/imagekeeper/imagekeeper/store"
	"github.com/imagekeeper/imagekeeper/store/storetest"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestEmptySelectionIsNotASuccess retags the servers of a working policy away one by
// one. The server that leaves while it has good images is said once, in the log,
// the slot's reason (history) and the audit; a slot that selects nothing has the
// outcome empty, is logged at WARN with the selector, is not a success
// (last_success stays) and starts imagekeeper_selection_empty_since_timestamp_seconds.
// On the old code the empty slot was "ran" and counted as a success.
func TestEmptySelectionIsNotASuccess(t *testing.T) {
	h := newHarness(t)
	ids := h.addServers(2)
	metrics := NewMetrics(prometheus.NewRegistry(), BuildInfo{Version: "test"})
	var logs lockedBuffer
	r := h.runner(func(o *runnerOptions) {
		o.Metrics = metrics
		o.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	ctx := context.Background()
	run := func(day int) *SlotReport {
		t.Helper()
		rep, err := r.RunSlot(ctx, h.cfg.Version, h.p, h.slot.Add(time.Duration(day)*24*time.Hour), TriggerScheduled)
		if err != nil {
			t.Fatalf("slot %d: %v", day, err)
		}
		return rep
	}
	leftEvents := func() []store.Event {
		t.Helper()
		evs, err := h.store.Events(ctx, store.EventFilter{Policy: "web", Kind: store.EventServerLeft})
		if err != nil {
			t.Fatal(err)
		}
		return evs
	}
	lastSuccess := func() float64 { return testutil.ToFloat64(metrics.lastSuccess.WithLabelValues("web")) }

	if rep := run(0); rep.Outcome != store.OutcomeRan || rep.Counts.Good != 2 || !rep.OK() {
		t.Fatalf("first slot: %s %+v %q", rep.Outcome, rep.Counts, rep.Reason)
	}

	h.sim.SetServerTags(ids[0], []string{"backup=dialy"})
	rep := run(1)
	want := "1 server(s) with good images left the selection: " + ids[0]
	if rep.Outcome != store.OutcomeRan || rep.Reason != want {
		t.Fatalf("slot after a retag: %s %q, want ran %q", rep.Outcome, rep.Reason, want)
	}
	if evs := leftEvents(); len(evs) != 1 || evs[0].ServerID != ids[0] {
		t.Fatalf("left events %+v, want one for %s", evs, ids[0])
	}
	if rep := run(2); rep.Reason != "" || len(leftEvents()) != 1 {
		t.Fatalf("the leaver was reported again: reason %q, %d events", rep.Reason, len(leftEvents()))
	}
	okBefore := lastSuccess()

	h.sim.SetServerTags(ids[1], nil)
	rep = run(3)
	wantReason := "selected no server (select: tags=[backup=daily] exclude_tags=[no-backup]); " +
		"1 server(s) with good images left the selection: " + ids[1]
	if rep.Outcome != store.OutcomeEmpty || rep.OK() || rep.Reason != wantReason {
		t.Fatalf("slot that selects nothing: outcome %s ok=%v reason %q\nwant empty, not ok, %q", rep.Outcome, rep.OK(), rep.Reason, wantReason)
	}
	if rep := run(4); rep.Outcome != store.OutcomeEmpty || strings.Contains(rep.Reason, "left") {
		t.Fatalf("second empty slot: %s %q", rep.Outcome, rep.Reason)
	}
	if n := len(leftEvents()); n != 2 {
		t.Fatalf("%d left events, want 2 (one per server, once)", n)
	}
	if got := lastSuccess(); got != okBefore {
		t.Fatalf("last_success moved from %v to %v on empty slots", okBefore, got)
	}
	if got := testutil.ToFloat64(metrics.slots.WithLabelValues("web", string(store.OutcomeEmpty))); got != 2 {
		t.Fatalf("slots_total{outcome=empty} = %v, want 2", got)
	}
	if got, want := testutil.ToFloat64(metrics.emptySince.WithLabelValues("web")), float64(h.slot.Add(72*time.Hour).Unix()); got != want {
		t.Fatalf("selection_empty_since = %v, want the first empty slot %v", got, want)
	}
	// The last servers it did select stay live: their recovery points keep ageing,
	// so ImagekeeperRecoveryPointStale still fires; the series does not vanish.
	if rps, err := h.store.NewestGoodPerServer(ctx, "web"); err != nil || len(rps) != 1 || rps[0].ServerID != ids[1] || rps[0].NewestGood.IsZero() {
		t.Fatalf("live servers after empty slots: %+v, %v; want %s with its good image", rps, err, ids[1])
	}
	if !strings.Contains(logs.String(), `level=WARN msg="the policy selected no server`) ||
		!strings.Contains(logs.String(), `select="tags=[backup=daily] exclude_tags=[no-backup]"`) {
		t.Fatalf("no WARN with the selector:\n%s", logs.String())
	}

	// A slot that selects a server again ends the run of empty slots.
	h.sim.SetServerTags(ids[1], []string{"backup=daily"})
	if rep := run(5); rep.Outcome != store.OutcomeRan {
		t.Fatalf("slot after re-tagging: %s %q", rep.Outcome, rep.Reason)
	}
	if n := testutil.CollectAndCount(metrics.emptySince); n != 0 {
		t.Fatalf("selection_empty_since still has %d series", n)
	}
}

// TestEmptySelectionSurvivesARestart: a fresh Metrics (a restarted daemon) reads the
// start of the current run of empty slots from the lineage, so that the alert's
// clock does not start again at every restart; a later listing takes over.
func TestEmptySelectionSurvivesARestart(t *testing.T) {
	ctx := context.Background()
	cfg, err := policy.Parse("refresh.yaml", []byte(refreshConfig))
	if err != nil {
		t.Fatal(err)
	}
	st := storetest.MustOpen(t, nil)
	d1 := time.Date(2026, 11, 23, 2, 30, 0, 0, time.UTC)
	for i, outcome := range []store.SlotOutcome{store.OutcomeRan, store.OutcomeEmpty, store.OutcomeEmpty} {
		sl, err := st.StartSlot(ctx, store.Slot{Policy: "web", Slot: d1.AddDate(0, 0, i), Trigger: store.TriggerScheduled})
		if err != nil {
			t.Fatal(err)
		}
		selected := 1
		if outcome == store.OutcomeEmpty {
			selected = 0
		}
		if err := st.FinishSlot(ctx, sl.ID, outcome, "", store.SlotCounts{Selected: selected, Good: selected}); err != nil {
			t.Fatal(err)
		}
	}
	m := NewMetrics(prometheus.NewRegistry(), BuildInfo{Version: "test"})
	if err := m.Refresh(ctx, st, cfg, d1.AddDate(0, 0, 3)); err != nil {
		t.Fatal(err)
	}
	if got, want := testutil.ToFloat64(m.emptySince.WithLabelValues("web")), float64(d1.AddDate(0, 0, 1).Unix()); got != want {
		t.Fatalf("empty since %v after a restart, want the first empty slot %v", got, want)
	}
	if n := testutil.CollectAndCount(m.emptySince); n != 1 {
		t.Fatalf("%d empty-selection series, want only web's", n)
	}
	m.SelectionEmpty("web", d1.AddDate(0, 0, 3), false)
	if err := m.Refresh(ctx, st, cfg, d1.AddDate(0, 0, 3)); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(m.emptySince); n != 0 {
		t.Fatalf("a refresh brought back the series a listing removed (%d series)", n)
	}
}
