package scheduler

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/imagekeeper/imagekeeper/cloud"
	"github.com/imagekeeper/imagekeeper/cloud/simcloud"
	"github.com/imagekeeper/imagekeeper/policy"
	"github.com/imagekeeper/imagekeeper/store"
)

// drillHarness is a run harness whose four servers (two image-backed, two
// volume-backed) have a good image each, and a policy with a verify block.
func drillHarness(t *testing.T, v policy.Verify) (*harness, *policy.Policy) {
	t.Helper()
	h := newHarness(t, withSim(func(o *simcloud.Options) {
		o.BootTime, o.SnapshotDeleteTime = 40*time.Millisecond, 20*time.Millisecond
	}))
	h.addServers(4)
	rep, err := h.runner(nil).RunSlot(context.Background(), h.cfg.Version, h.p, h.slot, TriggerManual)
	if err != nil || !rep.OK() || len(rep.Servers) != 4 {
		t.Fatalf("backup run: %v, %+v", err, rep)
	}
	p := *h.p
	v.Schedule = h.p.Schedule
	if v.Sample == 0 {
		v.Sample = 2
	}
	if v.Flavor == "" {
		v.Flavor = "m1.small"
	}
	if v.Network == "" {
		v.Network = "none"
	}
	if v.Timeout == 0 {
		v.Timeout = 10 * time.Second
	}
	p.Verify = &v
	return h, &p
}

// leftovers lists the drill servers and restored volumes in the simulator.
func leftovers(h *harness) (servers []string, volumes []simcloud.VolumeState) {
	for _, s := range h.sim.Servers() {
		if s.Metadata[DrillStampKey] != "" {
			servers = append(servers, s.ID)
		}
	}
	return servers, h.sim.Volumes()
}

func TestDrillVerifiesRotatesAndCleansUp(t *testing.T) {
	h, p := drillHarness(t, policy.Verify{ConsoleMarker: "login:"})
	m, _ := newTestMetrics(t)
	r := NewDriller(h.runner(func(o *runnerOptions) { o.Metrics = m }).sh)
	ctx := context.Background()
	drilled := map[string]int{}
	for round := 0; round < 2; round++ {
		rep, err := r.Drill(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		if len(rep.Results) != 2 {
			t.Fatalf("round %d: %d drills, want sample 2: %+v", round, len(rep.Results), rep)
		}
		for _, res := range rep.Results {
			if res.Result != store.VerifyOK || res.CleanupError != "" || !strings.Contains(res.Detail, `console shows "login:"`) {
				t.Errorf("round %d: drill %+v, want ok with the marker and a clean cleanup", round, res)
			}
			drilled[res.ServerID]++
		}
		if s, v := leftovers(h); len(s) != 0 || len(v) != 0 {
			t.Fatalf("round %d left drill servers %v and volumes %+v", round, s, v)
		}
	}
	if len(drilled) != 4 {
		t.Errorf("two drills of sample 2 drilled %v, want every one of the 4 servers once (rotation)", drilled)
	}
	rows, err := h.store.Images(ctx, store.ImageFilter{Policy: p.Name, States: []store.ImageState{store.ImageGood}})
	if err != nil {
		t.Fatal(err)
	}
	for _, im := range rows {
		v, err := h.store.Verification(ctx, im.Row)
		if err != nil || v.Result != store.VerifyOK || v.At.IsZero() {
			t.Errorf("image %s verification = %+v, %v; want ok with verified_at", im.ImageID, v, err)
		}
	}
	open, err := h.store.OpenDrills(ctx)
	if err != nil || len(open) != 0 {
		t.Errorf("open drills after clean drills: %+v %v", open, err)
	}
	if got := testutil.ToFloat64(m.verifications.WithLabelValues(p.Name, "ok")); got != 4 {
		t.Errorf("imagekeeper_verifications_total{result=ok} = %v, want 4", got)
	}
	if testutil.ToFloat64(m.lastVerified.WithLabelValues(p.Name)) == 0 {
		t.Error("imagekeeper_last_verified_timestamp_seconds not set after a good drill")
	}
}

func TestDrillFailuresAreRecorded(t *testing.T) {
	h, p := drillHarness(t, policy.Verify{Sample: 1})
	r := NewDriller(h.runner(nil).sh)
	ctx := context.Background()

	const fault = "No valid host was found. There are not enough hosts available."
	h.sim.FailNextBoot(fault)
	rep, err := r.Drill(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if res := rep.Results[0]; res.Result != store.VerifyFailed || res.Detail != "ERROR: "+fault {
		t.Errorf("ERROR boot drill = %+v", res)
	}
	h.sim.SetInstanceQuota(1)
	rep, err = r.Drill(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if res := rep.Results[0]; res.Result != store.VerifyFailed ||
		!strings.HasPrefix(res.Detail, "the project's quota refuses the drill server: Quota exceeded for instances") {
		t.Errorf("over-quota drill = %+v", res)
	}
	h.sim.SetInstanceQuota(0)
	p.Verify.ConsoleMarker, p.Verify.Timeout = "this is never printed", 300*time.Millisecond
	rep, err = r.Drill(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if res := rep.Results[0]; res.Result != store.VerifyTimeout || !strings.Contains(res.Detail, "did not show") {
		t.Errorf("marker timeout drill = %+v", res)
	}
	if s, v := leftovers(h); len(s) != 0 || len(v) != 0 {
		t.Fatalf("failed drills left drill servers %v and volumes %+v", s, v)
	}
	v, err := h.store.Verification(ctx, rep.Results[0].imageRow(t, h))
	if err != nil || v.Result != store.VerifyTimeout {
		t.Errorf("verification on the image row = %+v %v", v, err)
	}
}

// imageRow finds the lineage row of a result's image.
func (res DrillResult) imageRow(t *testing.T, h *harness) int64 {
	t.Helper()
	im, err := h.store.ImageByID(context.Background(), res.ImageID)
	if err != nil {
		t.Fatal(err)
	}
	return im.Row
}

// TestDrillCrashLeavesNothing kills drills at their crash points (after the boot,
// and before the server id was recorded) and checks that the cleanup of a new
// Runner deletes every drill server and volume, and nothing else.
func TestDrillCrashLeavesNothing(t *testing.T) {
	h, p := drillHarness(t, policy.Verify{Sample: 4})
	ctx := context.Background()
	errKilled := errors.New("killed")
	crashing := NewDriller(h.runner(nil).sh)
	crashing.hooks.afterBoot = func(string) error { return errKilled }
	if _, err := crashing.Drill(ctx, p); !errors.Is(err, errKilled) {
		t.Fatalf("crashing drill: %v", err)
	}
	// Let the abandoned drill server become ACTIVE with its volumes.
	time.Sleep(100 * time.Millisecond)
	if s, _ := leftovers(h); len(s) != 1 {
		t.Fatalf("after the crash: drill servers %v, want the one booted", s)
	}
	// A boot whose answer was lost: journaled, the server exists, its id unknown.
	rows, _ := h.store.Images(ctx, store.ImageFilter{Policy: p.Name, States: []store.ImageState{store.ImageGood}})
	d, err := h.store.StartDrill(ctx, store.Drill{Policy: p.Name, ServerID: rows[0].ServerID, ImageRow: rows[0].Row,
		ImageID: rows[0].ImageID, Token: "lostanswer000001"})
	if err != nil {
		t.Fatal(err)
	}
	h.sim.AddServer(simcloud.ServerSpec{Name: "imagekeeper-drill-lost",
		Metadata: map[string]string{DrillStampKey: d.Token, cloud.StampOwner: h.store.Owner()}})
	// Not ours: a drill stamp with a token the journal does not hold, and our token
	// under another owner.
	foreign := h.sim.AddServer(simcloud.ServerSpec{Name: "someone-else",
		Metadata: map[string]string{DrillStampKey: "notinthejournal", cloud.StampOwner: h.store.Owner()}})

	fresh := NewDriller(h.runner(nil).sh)
	n, err := fresh.CleanupDrills(ctx)
	if err != nil || n != 2 {
		t.Fatalf("CleanupDrills = %d, %v; want both drills finished", n, err)
	}
	s, v := leftovers(h)
	if len(s) != 1 || s[0] != foreign || len(v) != 0 {
		t.Errorf("after cleanup: drill-stamped servers %v (want only the foreign %s), volumes %+v", s, foreign, v)
	}
	open, err := h.store.OpenDrills(ctx)
	if err != nil || len(open) != 0 {
		t.Errorf("open drills after cleanup: %+v %v", open, err)
	}
}

// TestDrillLostBootAnswer: the boot request made a server but its answer was
// lost (a 503 after the work): no verdict on the image, and the drill's cleanup
// finds the server by its token and deletes it.
func TestDrillLostBootAnswer(t *testing.T) {
	h, p := drillHarness(t, policy.Verify{Sample: 1})
	ctx := context.Background()
	h.sim.SetFault(simcloud.Fault{Op: "compute.servers.create", ErrorStatus: 503, Count: 1, After: true})
	rep, err := NewDriller(h.runner(nil).sh).Drill(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	res := rep.Results[0]
	if res.Result != "" || !strings.HasPrefix(res.Detail, "no answer to the boot request") || res.CleanupError != "" {
		t.Errorf("drill with a lost boot answer = %+v, want no verdict and a clean cleanup", res)
	}
	if s, v := leftovers(h); len(s) != 0 || len(v) != 0 {
		t.Errorf("left drill servers %v and volumes %+v", s, v)
	}
	if got := h.sim.Requests()["compute.servers.create"]; got != 1 {
		t.Errorf("%d boot requests, want exactly 1 (never a blind retry)", got)
	}
	ver, err := h.store.Verification(ctx, res.imageRow(t, h))
	if err != nil || !ver.At.IsZero() {
		t.Errorf("verification after a lost answer = %+v %v, want none", ver, err)
	}
}
