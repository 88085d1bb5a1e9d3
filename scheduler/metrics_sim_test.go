package scheduler

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/imagekeeper/imagekeeper/cloud/openstack"
	"github.com/imagekeeper/imagekeeper/cloud/simcloud"
	"github.com/imagekeeper/imagekeeper/policy"
)

const metricsSimPolicy = `cloud: sim
state: /unused/lineage.db
limits: {concurrency: 4, requests_per_second: 2000}
policies:
  - name: web
    select: {tags: [backup=metrics]}
    schedule: {cron: "0 * * * *"}
    image:
      name: '{{ .Server.Name }}-{{ .Slot.Format "20060102-1504" }}'
      wait_timeout: 20s
    retention: {keep_last: 1, min_keep: 1}
  - name: idle
    select: {tags: [backup=nothing-has-this]}
    schedule: {cron: "@daily"}
    image: {name: '{{ .Server.Name }}-{{ .Slot.Format "20060102" }}'}
    retention: {keep_last: 1}
`

// TestMetricsAfterScriptedRun drives the real backup run and prune against the
// simulated cloud through the OpenStack adapter (whose Observe hook feeds the cloud
// request metrics, as the daemon wires it), then compares every series the run and
// Refresh produce.
//
// Script: five tagged servers (three image-backed, one volume-backed with two
// volumes, one in ERROR) and one busy server. Slot 1 images four and skips two;
// slot 2, with the busy server free again, images five; prune (keep_last 1) then
// deletes slot 1's four images and the two volume snapshots behind the
// volume-backed one.
func TestMetricsAfterScriptedRun(t *testing.T) {
	ctx := context.Background()
	reg := prometheus.NewPedanticRegistry()
	m := NewMetrics(reg, testBuild)
	h := newHarness(t, withPolicy("metrics.yaml", []byte(metricsSimPolicy)),
		withSim(func(o *simcloud.Options) {
			*o = simcloud.Options{Seed: 7, ImageBuildTime: 80 * time.Millisecond,
				SnapshotBuildTime: 40 * time.Millisecond, SnapshotDeleteTime: 20 * time.Millisecond}
		}),
		// The adapter's defaults, with the Observe hook feeding the cloud request
		// metrics as the daemon wires it.
		withAdapter(func(o *openstack.Options) {
			*o = openstack.Options{Observe: func(r openstack.Request) {
				m.ObserveCloudRequest(r.Service, r.Operation, r.Status, r.Duration)
			}}
		}))
	sim, st, cfg := h.sim, h.store, h.cfg
	tags := []string{"backup=metrics"}
	for i := 1; i <= 3; i++ {
		sim.AddServer(simcloud.ServerSpec{Name: fmt.Sprintf("web-%d", i), Tags: tags})
	}
	sim.AddServer(simcloud.ServerSpec{Name: "db-1", Tags: tags, Volumes: 2})
	sim.AddServer(simcloud.ServerSpec{Name: "broken", Tags: tags, Status: "ERROR"})
	busy := sim.AddServer(simcloud.ServerSpec{Name: "busy", Tags: tags})
	sim.SetServerTaskState(busy, "image_snapshot")

	for _, p := range cfg.Policies {
		m.InitPolicy(p.Name)
	}
	r := h.runner(func(o *runnerOptions) { o.Metrics = m })
	web := cfg.Policies[0]

	slot1 := time.Now().UTC().Truncate(time.Hour).Add(-time.Hour)
	if _, err := r.RunSlot(ctx, cfg.Version, web, slot1, TriggerScheduled); err != nil {
		t.Fatal(err)
	}
	sim.SetServerTaskState(busy, "")
	rep, err := r.RunSlot(ctx, cfg.Version, web, slot1.Add(time.Hour), TriggerScheduled)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewRetention(r.sh, policy.NewCoordinator(cfg), RetentionOptions{}).Prune(ctx, web.Name, PruneOptions{SnapshotWait: 5 * time.Second}); err != nil {
		t.Fatal(err)
	}
	if err := m.Refresh(ctx, st, cfg, time.Now()); err != nil {
		t.Fatal(err)
	}

	const want = `
# HELP imagekeeper_images Images imagekeeper manages, by lineage state.
# TYPE imagekeeper_images gauge
imagekeeper_images{policy="idle",state="creating"} 0
imagekeeper_images{policy="idle",state="deleting"} 0
imagekeeper_images{policy="idle",state="failed"} 0
imagekeeper_images{policy="idle",state="good"} 0
imagekeeper_images{policy="idle",state="kept_protected"} 0
imagekeeper_images{policy="web",state="creating"} 0
imagekeeper_images{policy="web",state="deleting"} 0
imagekeeper_images{policy="web",state="failed"} 0
imagekeeper_images{policy="web",state="good"} 5
imagekeeper_images{policy="web",state="kept_protected"} 0
# HELP imagekeeper_images_created_total Images requested by imagekeeper that ended good (active, all snapshots available), failed, or late_good (failed at wait_timeout, completed later).
# TYPE imagekeeper_images_created_total counter
imagekeeper_images_created_total{policy="idle",result="failed"} 0
imagekeeper_images_created_total{policy="idle",result="good"} 0
imagekeeper_images_created_total{policy="idle",result="late_good"} 0
imagekeeper_images_created_total{policy="web",result="failed"} 0
imagekeeper_images_created_total{policy="web",result="good"} 9
imagekeeper_images_created_total{policy="web",result="late_good"} 0
# HELP imagekeeper_images_deleted_total Image deletions by result (deleted, already_gone, protected, failed).
# TYPE imagekeeper_images_deleted_total counter
imagekeeper_images_deleted_total{policy="idle",result="already_gone"} 0
imagekeeper_images_deleted_total{policy="idle",result="deleted"} 0
imagekeeper_images_deleted_total{policy="idle",result="failed"} 0
imagekeeper_images_deleted_total{policy="idle",result="protected"} 0
imagekeeper_images_deleted_total{policy="web",result="already_gone"} 0
imagekeeper_images_deleted_total{policy="web",result="deleted"} 4
imagekeeper_images_deleted_total{policy="web",result="failed"} 0
imagekeeper_images_deleted_total{policy="web",result="protected"} 0
# HELP imagekeeper_leftover_snapshots Volume snapshots whose image is deleted but which are still in the cloud.
# TYPE imagekeeper_leftover_snapshots gauge
imagekeeper_leftover_snapshots 0
# HELP imagekeeper_servers_selected Servers the policy selected in its latest slot.
# TYPE imagekeeper_servers_selected gauge
imagekeeper_servers_selected{policy="web"} 6
# HELP imagekeeper_servers_skipped_total Selected servers not imaged in a slot, by reason.
# TYPE imagekeeper_servers_skipped_total counter
imagekeeper_servers_skipped_total{policy="idle",reason="busy"} 0
imagekeeper_servers_skipped_total{policy="idle",reason="error_state"} 0
imagekeeper_servers_skipped_total{policy="idle",reason="hook_failed"} 0
imagekeeper_servers_skipped_total{policy="idle",reason="in_flight"} 0
imagekeeper_servers_skipped_total{policy="idle",reason="locked"} 0
imagekeeper_servers_skipped_total{policy="web",reason="busy"} 1
imagekeeper_servers_skipped_total{policy="web",reason="error_state"} 2
imagekeeper_servers_skipped_total{policy="web",reason="hook_failed"} 0
imagekeeper_servers_skipped_total{policy="web",reason="in_flight"} 0
imagekeeper_servers_skipped_total{policy="web",reason="locked"} 0
# HELP imagekeeper_servers_without_good_image Live servers of the policy that have no good image.
# TYPE imagekeeper_servers_without_good_image gauge
imagekeeper_servers_without_good_image{policy="idle"} 0
imagekeeper_servers_without_good_image{policy="web"} 1
# HELP imagekeeper_slots_total Scheduled slots by outcome (ran, caught_up, missed, skipped_overlap, failed, empty).
# TYPE imagekeeper_slots_total counter
imagekeeper_slots_total{outcome="caught_up",policy="idle"} 0
imagekeeper_slots_total{outcome="empty",policy="idle"} 0
imagekeeper_slots_total{outcome="caught_up",policy="web"} 0
imagekeeper_slots_total{outcome="empty",policy="web"} 0
imagekeeper_slots_total{outcome="failed",policy="idle"} 0
imagekeeper_slots_total{outcome="failed",policy="web"} 0
imagekeeper_slots_total{outcome="missed",policy="idle"} 0
imagekeeper_slots_total{outcome="missed",policy="web"} 0
imagekeeper_slots_total{outcome="ran",policy="idle"} 0
imagekeeper_slots_total{outcome="ran",policy="web"} 2
imagekeeper_slots_total{outcome="skipped_overlap",policy="idle"} 0
imagekeeper_slots_total{outcome="skipped_overlap",policy="web"} 0
# HELP imagekeeper_snapshots_deleted_total Volume snapshot deletions by result (deleted, already_gone, in_use, failed).
# TYPE imagekeeper_snapshots_deleted_total counter
imagekeeper_snapshots_deleted_total{policy="idle",result="already_gone"} 0
imagekeeper_snapshots_deleted_total{policy="idle",result="deleted"} 0
imagekeeper_snapshots_deleted_total{policy="idle",result="failed"} 0
imagekeeper_snapshots_deleted_total{policy="idle",result="in_use"} 0
imagekeeper_snapshots_deleted_total{policy="web",result="already_gone"} 0
imagekeeper_snapshots_deleted_total{policy="web",result="deleted"} 2
imagekeeper_snapshots_deleted_total{policy="web",result="failed"} 0
imagekeeper_snapshots_deleted_total{policy="web",result="in_use"} 0
`
	names := []string{"imagekeeper_images", "imagekeeper_images_created_total", "imagekeeper_images_deleted_total",
		"imagekeeper_leftover_snapshots", "imagekeeper_servers_selected", "imagekeeper_servers_skipped_total",
		"imagekeeper_servers_without_good_image", "imagekeeper_slots_total", "imagekeeper_snapshots_deleted_total"}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), names...); err != nil {
		t.Fatal(err)
	}

	// Timing-dependent series: their presence and shape, not their values.
	if got := testutil.CollectAndCount(m.createDuration); got != 2 {
		t.Errorf("image_create_duration_seconds: %d series, want one per policy", got)
	}
	if got := histogramCount(t, reg, "imagekeeper_image_create_duration_seconds", "web"); got != 9 {
		t.Errorf("image_create_duration_seconds{policy=web} count = %d, want 9 (one per good image)", got)
	}
	// The runner reports slot 2's finish, Refresh the store's record of it (stamped
	// a moment later); either is right.
	if v := testutil.ToFloat64(m.lastSuccess.WithLabelValues("web")); v < unixSeconds(rep.Finished) || v > unixSeconds(rep.Finished)+1 {
		t.Errorf("last success = %v, want slot 2's finish %v", v, unixSeconds(rep.Finished))
	}
	for _, op := range []struct{ service, operation, code string }{
		{"identity", "token", "201"}, {"compute", "list_servers", "200"}, {"compute", "create_image", "202"},
		{"image", "delete_image", "204"},
	} {
		if v := testutil.ToFloat64(m.cloudRequests.WithLabelValues(op.service, op.operation, op.code)); v < 1 {
			t.Errorf("cloud_requests_total{service=%q,operation=%q,code=%q} = %v, want >= 1", op.service, op.operation, op.code, v)
		}
	}
	// The worst recovery point is the oldest newest-good image of slot 2's servers.
	if n, err := testutil.GatherAndCount(reg, "imagekeeper_newest_good_image_age_seconds"); err != nil || n != 1 {
		t.Errorf("newest_good_image_age_seconds: %d series (%v), want 1 (web only)", n, err)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
}

// histogramCount returns the sample count of the histogram's series for policy.
func histogramCount(t *testing.T, reg prometheus.Gatherer, name, policy string) uint64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, mm := range mf.GetMetric() {
			for _, lp := range mm.GetLabel() {
				if lp.GetName() == "policy" && lp.GetValue() == policy {
					return mm.GetHistogram().GetSampleCount()
				}
			}
		}
	}
	return 0
}
