package scheduler

import (
	"testing"
	"time"

	"github.com/imagekeeper/imagekeeper/policy"
	"github.com/imagekeeper/imagekeeper/store"
)

// TestTickAcrossDST drives the scheduler minute by minute through both 2026 DST
// transitions of America/New_York with real compiled schedules: every wall-clock slot
// runs exactly once, a gap slot at the first instant after the gap, and nothing is
// recorded missed.
func TestTickAcrossDST(t *testing.T) {
	ny, err := time.LoadLocation("America/New_York")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		cron string
		day  time.Time // local midnight
		want []string  // RFC 3339 instants of the runs
	}{
		{"daily 02:30 on spring-forward day", "30 2 * * *", time.Date(2026, 3, 8, 0, 0, 0, 0, ny),
			[]string{"2026-03-08T03:00:00-04:00"}},
		{"daily 01:30 on fall-back day", "30 1 * * *", time.Date(2026, 11, 1, 0, 0, 0, 0, ny),
			[]string{"2026-11-01T01:30:00-04:00"}},
		{"hourly on fall-back day", "0 * * * *", time.Date(2026, 11, 1, 0, 0, 0, 0, ny), nil},
		{"hourly on spring-forward day", "0 * * * *", time.Date(2026, 3, 8, 0, 0, 0, 0, ny), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc := "policies:\n  - name: p\n    select: {tags: [x]}\n    schedule: {cron: \"" + tt.cron +
				"\", timezone: America/New_York}\n    image: {name: 'n-{{ .Server.Name }}'}\n    retention: {keep_last: 1}\n"
			cfg, err := policy.Parse("dst.yaml", []byte(doc))
			if err != nil {
				t.Fatal(err)
			}
			h := newTickHarness(t)
			h.clock.Set(tt.day.Add(-time.Minute))
			h.start(t, cfg)
			var runs []time.Time
			end := tt.day.AddDate(0, 0, 1)
			for now := tt.day; now.Before(end); now = now.Add(time.Minute) {
				h.clock.Set(now)
				h.s.Tick(now)
				for {
					select {
					case c := <-h.runs.calls:
						runs = append(runs, c.slot)
						continue
					default:
					}
					break
				}
				h.settle(t)
			}
			for len(h.runs.calls) > 0 {
				runs = append(runs, (<-h.runs.calls).slot)
			}
			seen := map[string]int{}
			for _, r := range runs {
				seen[r.In(ny).Format("15:04")]++
			}
			if tt.want != nil {
				if len(runs) != len(tt.want) {
					t.Fatalf("runs %v, want %v", runs, tt.want)
				}
				for i, w := range tt.want {
					if got := runs[i].In(ny).Format(time.RFC3339); got != w {
						t.Errorf("run %d at %s, want %s", i, got, w)
					}
				}
			} else {
				// Hourly: each wall hour once; on the spring-forward day 02:00 does not
				// exist and fires at 03:00, which is the same instant as the 03:00 slot.
				wantRuns := 24
				if tt.day.Month() == time.March {
					wantRuns = 23
				}
				if len(runs) != wantRuns {
					t.Fatalf("%d runs, want %d: %v", len(runs), wantRuns, runs)
				}
				for hr, n := range seen {
					if n != 1 {
						t.Errorf("wall %s ran %d times", hr, n)
					}
				}
			}
			for _, line := range h.ledger.ledger("p") {
				if len(line) > 9 && line[9:] != string(store.OutcomeRan) {
					t.Errorf("ledger row %q: every slot should have run", line)
				}
			}
		})
	}
}
