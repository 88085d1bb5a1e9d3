package main

import (
	"context"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/imagekeeper/imagekeeper/cloud/simcloud"
	"github.com/imagekeeper/imagekeeper/scheduler"
	"github.com/imagekeeper/imagekeeper/store"
	"github.com/imagekeeper/imagekeeper/store/storetest"
)

// TestDaemonRunsRestoreDrills runs the daemon with verify: blocks against the
// simulator over HTTP: drills boot the images on their schedules, the results land
// on the image rows and in the metrics, images and why show them, and nothing of
// the drills is left in the cloud after the daemon stops.
func TestDaemonRunsRestoreDrills(t *testing.T) {
	e := newEnv(t, simcloud.Options{BootTime: 100 * time.Millisecond})
	e.sim.AddServer(simcloud.ServerSpec{Name: "web-1", Tags: []string{"web"}})
	e.sim.AddServer(simcloud.ServerSpec{Name: "db-1", Tags: []string{"db"}, Volumes: 2})
	e.writeConfig(policyYAML("web", "@every 1s", "web", "") +
		"    verify: {cron: \"@every 2s\", flavor: m1.tiny, timeout: 10s, console_marker: \"login:\"}\n" +
		policyYAML("db", "@every 2s", "db", "") +
		"    verify: {cron: \"@every 3s\", flavor: m1.small, timeout: 10s}\n")
	r := e.start()
	ctx := context.Background()
	eventually(t, "both policies' images verified by a drill", 45*time.Second, func() bool {
		v, err := r.st.Verifications(ctx)
		if err != nil {
			t.Fatal(err)
		}
		pols := map[string]bool{}
		for row, ver := range v {
			if ver.Result != store.VerifyOK {
				t.Fatalf("image row %d: drill %s: %s", row, ver.Result, ver.Detail)
			}
			im, err := r.st.Images(ctx, store.ImageFilter{})
			if err != nil {
				t.Fatal(err)
			}
			for _, x := range im {
				if x.Row == row {
					pols[x.Policy] = true
				}
			}
		}
		return pols["web"] && pols["db"]
	})
	_, body := daemonGet(t, "http://"+r.addr+"/metrics")
	for _, want := range []string{
		`imagekeeper_verifications_total{policy="web",result="ok"}`,
		`imagekeeper_verifications_total{policy="db",result="failed"} 0`,
		`imagekeeper_last_verified_timestamp_seconds{policy="db"}`,
		`imagekeeper_last_verify_success{policy="web"} 1`,
		`imagekeeper_verify_period_seconds{policy="db"} 3`,
		`imagekeeper_verify_duration_seconds_count`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	// restore goes through the daemon's control socket while it runs.
	webImages := simImagesOf(e.sim, "web")
	code, out, errOut := cli(t, "restore", webImages[0].ID, "--name", "web-1-restored", "--wait", "--config", e.config)
	if code != 0 || !strings.Contains(out, "is ACTIVE") {
		t.Errorf("restore through the daemon: exit %d\n%s%s", code, out, errOut)
	}
	if evs, err := r.st.Events(ctx, store.EventFilter{Kind: eventRestored}); err != nil || len(evs) != 1 {
		t.Errorf("restored events in the daemon's lineage: %+v %v, want one", evs, err)
	}
	if _, err := os.Stat(controlSocketPath(e.state)); err != nil {
		t.Errorf("no control socket, so restore did not go through the daemon: %v", err)
	}
	if err := r.stop(t); err != nil {
		t.Fatalf("stop: %v\n%s", err, r.logs)
	}
	for _, s := range e.sim.Servers() {
		if s.Metadata[scheduler.DrillStampKey] != "" {
			t.Errorf("drill server %s (%s) left after the daemon stopped", s.ID, s.Status)
		}
	}
	if v := e.sim.Volumes(); len(v) != 0 {
		t.Errorf("drill volumes left after the daemon stopped: %+v", v)
	}
	st := storetest.MustOpenAt(t, e.state, nil)
	if open, err := st.OpenDrills(ctx); err != nil || len(open) != 0 {
		t.Errorf("drills not done after the daemon stopped: %+v %v", open, err)
	}
	st.Close()

	code, out, errOut = cli(t, "images", "--state", e.state, "--policy", "db")
	if code != 0 || !strings.Contains(out, "VERIFIED") || !regexp.MustCompile(`\sok 20\d\d-\d\d-\d\dT`).MatchString(out) {
		t.Fatalf("images: exit %d, no ok in the VERIFIED column:\n%s%s", code, out, errOut)
	}
	id := strings.Fields(strings.Split(strings.TrimSpace(out), "\n")[1])[0]
	for _, line := range strings.Split(out, "\n")[1:] {
		if f := strings.Fields(line); len(f) > 0 && strings.Contains(line, " ok 20") {
			id = f[0]
			break
		}
	}
	code, out, errOut = cli(t, "why", id, "--state", e.state)
	if code != 0 || !regexp.MustCompile(`(?m)^  verified:  ok at \S+ \(restore drill: ACTIVE\)$`).MatchString(out) ||
		!strings.Contains(out, "drill_verified") || !strings.Contains(out, "drill_cleaned") {
		t.Errorf("why %s: exit %d\n%s%s", id, code, out, errOut)
	}
}
