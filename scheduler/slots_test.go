package scheduler

import (
	"strings"
	"testing"
	"time"

	"github.com/imagekeeper/imagekeeper/store"
)

// everySchedule is a fixed-interval schedule aligned to the epoch (not a clock: it
// says which slots are due, the test says what time it is), the shape of an
// @every policy, so the ledger rules can be tested without the policy package.
type everySchedule struct{ d time.Duration }

func (e everySchedule) Next(t time.Time) time.Time {
	return t.Truncate(e.d).Add(e.d)
}

func (e everySchedule) Latest(t time.Time) time.Time {
	return t.Truncate(e.d)
}

var t0 = time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)

func TestDueSlotsNothingDue(t *testing.T) {
	c := everySchedule{time.Minute}
	p := dueSlots(c, t0, t0.Add(59*time.Second), 10)
	if !p.latest.IsZero() || len(p.earlier) != 0 || p.older != 0 {
		t.Fatalf("nothing should be due, got %+v", p)
	}
	// The watermark itself is handled: a slot equal to it is not due again.
	p = dueSlots(c, t0, t0, 10)
	if !p.latest.IsZero() {
		t.Fatalf("slot at the watermark came due again: %v", p.latest)
	}
}

func TestDueSlotsBoundsRows(t *testing.T) {
	c := everySchedule{time.Minute}
	// Down for 1000 minutes: 1000 slots are due, the latest plus 999 earlier ones.
	now := t0.Add(1000*time.Minute + 30*time.Second)
	p := dueSlots(c, t0, now, 5)
	if want := t0.Add(1000 * time.Minute); !p.latest.Equal(want) {
		t.Fatalf("latest = %v, want %v", p.latest, want)
	}
	if len(p.earlier) != 5 {
		t.Fatalf("earlier has %d rows, want 5 (the bound)", len(p.earlier))
	}
	for i, x := range p.earlier {
		if want := t0.Add(time.Duration(995+i) * time.Minute); !x.Equal(want) {
			t.Errorf("earlier[%d] = %v, want %v", i, x, want)
		}
	}
	if p.older != 994 || p.olderAtLeast {
		t.Fatalf("older = %d (at least %v), want exactly 994", p.older, p.olderAtLeast)
	}
	if got := 1 + len(p.earlier) + p.older; got != 1000 {
		t.Fatalf("accounted for %d slots, want 1000", got)
	}
}

func TestPlanSlots(t *testing.T) {
	c := everySchedule{10 * time.Minute}
	rules := func(latest bool, maxLate, grace time.Duration) planRules {
		return planRules{catchUpLatest: latest, maxLateness: maxLate, grace: grace,
			missedReason: "down", maxRows: 100}
	}
	tests := []struct {
		name        string
		after, now  time.Time
		rules       planRules
		wantRun     time.Time
		wantCatchUp bool
		wantMissed  []time.Time
		wantReason  string // substring of the last record's reason
	}{
		{
			name: "on time", after: t0, now: t0.Add(10*time.Minute + time.Second),
			rules: rules(false, 0, time.Minute), wantRun: t0.Add(10 * time.Minute),
		},
		{
			name: "start within max_lateness with latest catches up the latest only",
			// Down from 10:00 to 10:45: slots 10:10..10:40 are due.
			after: t0, now: t0.Add(45 * time.Minute), rules: rules(true, time.Hour, 0),
			wantRun: t0.Add(40 * time.Minute), wantCatchUp: true,
			wantMissed: []time.Time{t0.Add(10 * time.Minute), t0.Add(20 * time.Minute), t0.Add(30 * time.Minute)},
		},
		{
			name:  "start beyond max_lateness records all missed",
			after: t0, now: t0.Add(45 * time.Minute), rules: rules(true, 2*time.Minute, 0),
			wantMissed: []time.Time{t0.Add(10 * time.Minute), t0.Add(20 * time.Minute), t0.Add(30 * time.Minute),
				t0.Add(40 * time.Minute)},
			wantReason: "beyond max_lateness",
		},
		{
			name:  "catch_up none records all missed",
			after: t0, now: t0.Add(25 * time.Minute), rules: rules(false, time.Hour, 0),
			wantMissed: []time.Time{t0.Add(10 * time.Minute), t0.Add(20 * time.Minute)},
			wantReason: "catch_up is none",
		},
		{
			name:  "zero max_lateness means no bound",
			after: t0, now: t0.Add(1000*time.Hour + time.Minute), rules: rules(true, 0, 0),
			wantRun: t0.Add(1000 * time.Hour), wantCatchUp: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			plan := planSlots(c, tt.after, tt.now, tt.rules)
			if !plan.run.Equal(tt.wantRun) || plan.catchUp != tt.wantCatchUp {
				t.Fatalf("run = %v catchUp=%v, want %v catchUp=%v", plan.run, plan.catchUp, tt.wantRun, tt.wantCatchUp)
			}
			if tt.name == "zero max_lateness means no bound" {
				// 6000 slots came due: the latest runs, 5999 are missed, written as
				// 100 rows of which the first stands for itself and the 5899 before it.
				if len(plan.records) != 100 || plan.records[0].count != 5999-99 {
					t.Fatalf("got %d records, first count %d", len(plan.records), plan.records[0].count)
				}
				if !strings.Contains(plan.records[0].reason, "5899 earlier missed slots") {
					t.Fatalf("summary reason = %q", plan.records[0].reason)
				}
				return
			}
			if len(plan.records) != len(tt.wantMissed) {
				t.Fatalf("records = %+v, want missed %v", plan.records, tt.wantMissed)
			}
			for i, r := range plan.records {
				if r.outcome != store.OutcomeMissed || !r.slot.Equal(tt.wantMissed[i]) || r.count != 1 {
					t.Errorf("record %d = %+v, want missed %v", i, r, tt.wantMissed[i])
				}
			}
			if tt.wantReason != "" && !strings.Contains(plan.records[len(plan.records)-1].reason, tt.wantReason) {
				t.Errorf("reason %q lacks %q", plan.records[len(plan.records)-1].reason, tt.wantReason)
			}
		})
	}
}
