package scheduler

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/imagekeeper/imagekeeper/policy"
	"github.com/imagekeeper/imagekeeper/store"
	"github.com/imagekeeper/imagekeeper/store/storetest"
)

const refreshConfig = `
state: /nonexistent/lineage.db
policies:
  - name: web
    select: {tags: [backup=daily]}
    schedule: {cron: "30 2 * * *", timezone: UTC}
    image: {name: '{{ .Server.Name }}-{{ .Slot.Format "20060102-1504" }}'}
    retention: {keep_last: 3}
  - name: weekdays
    select: {tags: [backup=weekdays]}
    schedule: {cron: "0 2 * * 1-5", timezone: Europe/Berlin}
    image: {name: '{{ .Server.Name }}-{{ .Slot.Format "20060102-1504" }}'}
    retention: {keep_last: 3}
  - name: fast
    select: {tags: [backup=fast]}
    schedule: {cron: "@every 10m"}
    image: {name: '{{ .Server.Name }}-{{ .Slot.Format "20060102-1504" }}'}
    retention: {keep_last: 3}
`

// lineage drives the store through its public API, the way a backup run does.
type lineage struct {
	t     *testing.T
	st    *store.Store
	clock *storetest.Clock
	n     int
}

func (l *lineage) slot(policyName string, at time.Time, run func(sl store.Slot) store.SlotCounts) {
	l.t.Helper()
	ctx := context.Background()
	l.clock.Set(at)
	sl, err := l.st.StartSlot(ctx, store.Slot{Policy: policyName, Slot: at, Trigger: store.TriggerScheduled})
	if err != nil {
		l.t.Fatal(err)
	}
	c := run(sl)
	l.clock.Advance(time.Minute)
	if err := l.st.FinishSlot(ctx, sl.ID, store.OutcomeRan, "", c); err != nil {
		l.t.Fatal(err)
	}
}

// image requests an image of server in sl and ends it good or failed; it returns
// when the image was requested.
func (l *lineage) image(sl store.Slot, server string, good bool) time.Time {
	l.t.Helper()
	ctx := context.Background()
	l.n++
	l.clock.Advance(time.Second)
	requested := l.clock.Now()
	im, _, err := l.st.RecordIntent(ctx, store.Intent{Policy: sl.Policy, ServerID: server, Slot: sl.Slot, SlotID: sl.ID,
		Name: fmt.Sprintf("%s-%d", server, l.n)})
	if err != nil {
		l.t.Fatal(err)
	}
	if _, err := l.st.SetImageID(ctx, im.Row, fmt.Sprintf("img-%d", l.n), false, ""); err != nil {
		l.t.Fatal(err)
	}
	l.clock.Advance(time.Minute)
	if good {
		_, err = l.st.MarkGood(ctx, im.Row, store.Good{})
	} else {
		_, err = l.st.MarkFailed(ctx, im.Row, "image vanished")
	}
	if err != nil {
		l.t.Fatal(err)
	}
	return requested
}

func TestMetricsRefresh(t *testing.T) {
	ctx := context.Background()
	cfg, err := policy.Parse("refresh.yaml", []byte(refreshConfig))
	if err != nil {
		t.Fatal(err)
	}
	clock := storetest.NewClock(time.Time{})
	l := &lineage{t: t, st: storetest.MustOpen(t, clock), clock: clock}

	// web: slot 1 images a and b; slot 2 images a again, b fails, c is skipped
	// (ERROR). Worst recovery point: b's image of slot 1; c has none.
	d1 := time.Date(2026, 11, 23, 2, 30, 0, 0, time.UTC) // a Monday
	var bRequested time.Time
	l.slot("web", d1, func(sl store.Slot) store.SlotCounts {
		l.image(sl, "a", true)
		bRequested = l.image(sl, "b", true)
		return store.SlotCounts{Selected: 2, Good: 2}
	})
	webLastSuccess := l.clock.Now() // slot 2 has a failed image: not a success
	l.slot("web", d1.Add(24*time.Hour), func(sl store.Slot) store.SlotCounts {
		l.image(sl, "a", true)
		l.image(sl, "b", false) // b's newest good image stays slot 1's
		if _, err := l.st.AddEvent(ctx, store.Event{Kind: store.EventServerSkipped, Policy: "web", ServerID: "c",
			Slot: sl.Slot, SlotID: sl.ID, Message: "server in ERROR"}); err != nil {
			t.Fatal(err)
		}
		return store.SlotCounts{Selected: 3, Good: 1, Failed: 1, Skipped: 1}
	})
	// A policy no longer in the config: its images stay in the store, not in metrics.
	l.slot("gone", d1, func(sl store.Slot) store.SlotCounts {
		l.image(sl, "z", true)
		return store.SlotCounts{Selected: 1, Good: 1}
	})

	reg := prometheus.NewPedanticRegistry()
	m := NewMetrics(reg, testBuild)
	for _, p := range cfg.Policies {
		m.InitPolicy(p.Name)
	}
	now := time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC) // Tuesday
	scrape := now
	m.newestGoodAge.now = func() time.Time { return scrape }
	if err := m.Refresh(ctx, l.st, cfg, now); err != nil {
		t.Fatal(err)
	}
	worstAge := now.Sub(bRequested).Seconds()

	want := fmt.Sprintf(`
# HELP imagekeeper_images Images imagekeeper manages, by lineage state.
# TYPE imagekeeper_images gauge
imagekeeper_images{policy="fast",state="creating"} 0
imagekeeper_images{policy="fast",state="deleting"} 0
imagekeeper_images{policy="fast",state="failed"} 0
imagekeeper_images{policy="fast",state="good"} 0
imagekeeper_images{policy="fast",state="kept_protected"} 0
imagekeeper_images{policy="web",state="creating"} 0
imagekeeper_images{policy="web",state="deleting"} 0
imagekeeper_images{policy="web",state="failed"} 1
imagekeeper_images{policy="web",state="good"} 3
imagekeeper_images{policy="web",state="kept_protected"} 0
imagekeeper_images{policy="weekdays",state="creating"} 0
imagekeeper_images{policy="weekdays",state="deleting"} 0
imagekeeper_images{policy="weekdays",state="failed"} 0
imagekeeper_images{policy="weekdays",state="good"} 0
imagekeeper_images{policy="weekdays",state="kept_protected"} 0
# HELP imagekeeper_last_success_timestamp_seconds Unix time at which the policy's last successful slot run finished (every selected server imaged or skipped with a reason).
# TYPE imagekeeper_last_success_timestamp_seconds gauge
imagekeeper_last_success_timestamp_seconds{policy="web"} %d
# HELP imagekeeper_leftover_snapshots Volume snapshots whose image is deleted but which are still in the cloud.
# TYPE imagekeeper_leftover_snapshots gauge
imagekeeper_leftover_snapshots 0
# HELP imagekeeper_newest_good_image_age_seconds Worst recovery point: age of the oldest, across the policy's live servers, of each server's newest good image.
# TYPE imagekeeper_newest_good_image_age_seconds gauge
imagekeeper_newest_good_image_age_seconds{policy="web"} %g
# HELP imagekeeper_schedule_period_seconds Longest gap between consecutive slots of the policy's schedule over the coming week.
# TYPE imagekeeper_schedule_period_seconds gauge
imagekeeper_schedule_period_seconds{policy="fast"} 600
imagekeeper_schedule_period_seconds{policy="weekdays"} 259200
imagekeeper_schedule_period_seconds{policy="web"} 86400
# HELP imagekeeper_servers_without_good_image Live servers of the policy that have no good image.
# TYPE imagekeeper_servers_without_good_image gauge
imagekeeper_servers_without_good_image{policy="fast"} 0
imagekeeper_servers_without_good_image{policy="web"} 1
imagekeeper_servers_without_good_image{policy="weekdays"} 0
`, webLastSuccess.Unix(), worstAge)
	names := []string{"imagekeeper_images", "imagekeeper_last_success_timestamp_seconds", "imagekeeper_leftover_snapshots",
		"imagekeeper_newest_good_image_age_seconds", "imagekeeper_schedule_period_seconds",
		"imagekeeper_servers_without_good_image"}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), names...); err != nil {
		t.Fatal(err)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}

	// Between refreshes the age keeps growing: it is computed at scrape time.
	scrape = now.Add(90 * time.Second)
	wantAge := fmt.Sprintf(`
# HELP imagekeeper_newest_good_image_age_seconds Worst recovery point: age of the oldest, across the policy's live servers, of each server's newest good image.
# TYPE imagekeeper_newest_good_image_age_seconds gauge
imagekeeper_newest_good_image_age_seconds{policy="web"} %g
`, worstAge+90)
	if err := testutil.GatherAndCompare(reg, strings.NewReader(wantAge), "imagekeeper_newest_good_image_age_seconds"); err != nil {
		t.Fatal(err)
	}

	// A reload that removes web: Refresh with the new config leaves no web series.
	m.RemovePolicy("web")
	cfg.Policies = cfg.Policies[1:]
	if err := m.Refresh(ctx, l.st, cfg, now); err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		got, err := testutil.GatherAndCount(reg, name)
		if err != nil {
			t.Fatal(err)
		}
		out, _ := reg.Gather()
		for _, mf := range out {
			for _, mm := range mf.GetMetric() {
				for _, lp := range mm.GetLabel() {
					if lp.GetName() == "policy" && (lp.GetValue() == "web" || lp.GetValue() == "gone") {
						t.Fatalf("%s still has a series for %s after the reload (%d series)", mf.GetName(), lp.GetValue(), got)
					}
				}
			}
		}
	}
}

func TestSchedulePeriod(t *testing.T) {
	cfg, err := policy.Parse("refresh.yaml", []byte(refreshConfig))
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]*policy.Policy{}
	for _, p := range cfg.Policies {
		byName[p.Name] = p
	}
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		policy string
		now    time.Time
		want   time.Duration
	}{
		{"web", time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC), 24 * time.Hour},
		{"fast", time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC), 10 * time.Minute},
		// Friday 02:00 to Monday 02:00 is the longest gap of a weekday schedule.
		{"weekdays", time.Date(2026, 6, 3, 12, 0, 0, 0, berlin), 72 * time.Hour},
		// The week of the autumn change in Berlin holds a 73-hour weekend (25 h Sunday).
		{"weekdays", time.Date(2026, 10, 22, 12, 0, 0, 0, berlin), 73 * time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.policy+" "+tt.now.Format(time.DateOnly), func(t *testing.T) {
			if got := SchedulePeriod(byName[tt.policy].Schedule, tt.now); got != tt.want {
				t.Errorf("SchedulePeriod = %v, want %v", got, tt.want)
			}
		})
	}
	if got := SchedulePeriod(nil, time.Now()); got != 0 {
		t.Errorf("SchedulePeriod(nil) = %v, want 0", got)
	}
}
