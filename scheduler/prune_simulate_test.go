package scheduler

import (
	"fmt"
	"testing"
	"time"

	"github.com/imagekeeper/imagekeeper/policy"
)

func simPolicy(t *testing.T, retention string) *policy.Policy {
	t.Helper()
	cfg, err := policy.Parse("sim.yaml", fmt.Appendf(nil, `policies:
  - name: p
    select: {tags: [a]}
    schedule: {cron: "30 2 * * *", timezone: Europe/Berlin}
    image: {name: '{{ .Server.Name }}'}
    retention:
%s
`, retention))
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Policies[0]
}

func TestSimulateRetentionReachesSteadyState(t *testing.T) {
	p := simPolicy(t, "      keep_last: 3\n      when_server_gone: apply")
	from := time.Date(2026, 3, 20, 12, 0, 0, 0, time.UTC)
	until := from.AddDate(0, 0, 14) // crosses the spring-forward night of Mar 29
	old := func(sid string, days ...int) []SimImage {
		var out []SimImage
		for _, d := range days {
			at := from.AddDate(0, 0, -d)
			out = append(out, SimImage{ServerID: sid, Name: fmt.Sprintf("%s-old%d", sid, d),
				RetentionImage: policy.RetentionImage{ID: fmt.Sprintf("%s-%d", sid, d), Time: at, Status: policy.RetentionGood}})
		}
		return out
	}
	servers := []SimServer{{ID: "b", Selected: true}, {ID: "a", Selected: true}, {ID: "gone"}}
	existing := map[string][]SimImage{"a": old("a", 1, 2), "gone": old("gone", 1, 2, 3, 4, 5)}
	steps, end, err := SimulateRetention(p, servers, existing, from, until)
	if err != nil {
		t.Fatal(err)
	}
	if len(steps) != 14 {
		t.Fatalf("%d slots in 14 days, want 14", len(steps))
	}
	for i, st := range steps {
		if h, m := st.Slot.In(p.Schedule.Location).Hour(), st.Slot.In(p.Schedule.Location).Minute(); h != 2 || m != 30 {
			// 02:30 does not exist on Mar 29 in Berlin: the slot fires at 03:00.
			if st.Slot.In(p.Schedule.Location).Format("01-02 15:04") != "03-29 03:00" {
				t.Errorf("slot %d at %v", i, st.Slot.In(p.Schedule.Location))
			}
		}
		if len(st.Created) != 2 {
			t.Errorf("slot %d created %d images, want 2", i, len(st.Created))
		}
		for _, d := range st.Deleted {
			if len(d.Reasons) == 0 || d.Reasons[0] != policy.ReasonNoRule {
				t.Errorf("slot %d deleted %s with reasons %q", i, d.ID, d.Reasons)
			}
		}
	}
	// The first slot: a has 2 old + 1 new (nothing to delete); b has 1; the gone
	// server (when_server_gone: apply) keeps its newest 3 of 5.
	if n := len(steps[0].Deleted); n != 2 {
		t.Errorf("first slot deleted %d, want the gone server's 2 oldest", n)
	}
	for sid, want := range map[string]int{"a": 3, "b": 3, "gone": 3} {
		if got := len(end[sid]); got != want {
			t.Errorf("server %s ends with %d images, want %d", sid, got, want)
		}
	}
	for _, im := range end["a"] {
		if im.Time.Before(until.AddDate(0, 0, -3)) {
			t.Errorf("server a keeps %s of %v, want only the last three slots", im.Name, im.Time)
		}
	}
}

func TestSimulateRetentionHonoursCapAndServerGoneKeep(t *testing.T) {
	p := simPolicy(t, "      keep_last: 1\n      max_deletions_per_run: 1")
	from := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	var servers []SimServer
	for _, id := range []string{"a", "b"} {
		servers = append(servers, SimServer{ID: id, Selected: true, Name: func(slot time.Time) string { return id + slot.Format("0102") }})
	}
	existing := map[string][]SimImage{"gone": {{ServerID: "gone", RetentionImage: policy.RetentionImage{ID: "g1",
		Time: from.Add(-time.Hour), Status: policy.RetentionGood}}, {ServerID: "gone", RetentionImage: policy.RetentionImage{ID: "g2",
		Time: from.Add(-2 * time.Hour), Status: policy.RetentionGood}}}}
	steps, end, err := SimulateRetention(p, servers, existing, from, from.AddDate(0, 0, 3))
	if err != nil {
		t.Fatal(err)
	}
	// Each slot two images go out of keep_last 1 but only one may be deleted per run.
	if steps[0].Deferred != 0 || len(steps[0].Deleted) != 0 {
		t.Errorf("first slot: deleted %d deferred %d, want none", len(steps[0].Deleted), steps[0].Deferred)
	}
	if len(steps[1].Deleted) != 1 || steps[1].Deferred != 1 {
		t.Errorf("second slot: deleted %d deferred %d, want 1 and 1", len(steps[1].Deleted), steps[1].Deferred)
	}
	if steps[0].Created[0].Name != "a1102" {
		t.Errorf("rendered name %q, want a1102", steps[0].Created[0].Name)
	}
	if len(end["gone"]) != 2 {
		t.Errorf("gone server under when_server_gone: keep lost images: %d left", len(end["gone"]))
	}
	if _, _, err := SimulateRetention(simPolicy(t, "      keep_last: 1"), servers, nil, from, from.AddDate(30, 0, 0)); err == nil {
		t.Error("a 30-year horizon of a daily schedule was accepted")
	}
}
