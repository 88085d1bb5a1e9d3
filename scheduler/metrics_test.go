package scheduler

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/imagekeeper/imagekeeper/store"
)

var testBuild = BuildInfo{Version: "1.2.3", Revision: "abc123", GoVersion: "go1.26.8"}

func newTestMetrics(t *testing.T) (*Metrics, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	return NewMetrics(reg, testBuild), reg
}

func TestMetricsNilReceiver(t *testing.T) {
	var m *Metrics
	// Every method must be callable on nil: callers never check.
	m.InitPolicy("p")
	m.RemovePolicy("p")
	m.SlotOutcome("p", store.OutcomeRan)
	m.ImageCreated("p", CreateGood, time.Second)
	m.ServerSkipped("p", SkipBusy)
	m.ServersSelected("p", 3)
	m.ImageDeleted("p", DeleteConfirmed)
	m.SnapshotDeleted("p", DeleteConfirmed)
	m.SetNextSlot("p", time.Unix(1, 0))
	m.SetLastSuccess("p", time.Unix(1, 0))
	m.ObserveCloudRequest("compute", "create_image", 202, time.Second)
	m.ConfigReloaded(true, time.Unix(1, 0))
	m.setSchedulePeriod("p", time.Hour)
}

func TestMetricsScriptedSequence(t *testing.T) {
	m, reg := newTestMetrics(t)
	t0 := time.Date(2026, 11, 24, 2, 30, 0, 0, time.UTC)

	m.ConfigReloaded(true, t0)
	m.InitPolicy("web")
	m.SetNextSlot("web", t0)
	m.ServersSelected("web", 3)
	m.ServerSkipped("web", SkipErrorState)
	m.ImageCreated("web", CreateGood, 90*time.Second)
	m.ImageCreated("web", CreateGood, 2*time.Hour)
	m.ImageCreated("web", CreateFailed, 5*time.Hour) // failed: counted, not observed
	m.SlotOutcome("web", store.OutcomeRan)
	m.SetLastSuccess("web", t0.Add(2*time.Hour))
	m.SetLastSuccess("web", t0.Add(time.Hour)) // older: ignored
	m.SetNextSlot("web", t0.Add(24*time.Hour))
	m.ImageDeleted("web", DeleteConfirmed)
	m.ImageDeleted("web", DeleteProtected)
	m.SnapshotDeleted("web", DeleteConfirmed)
	m.SnapshotDeleted("web", DeleteInUse)
	m.SlotOutcome("web", "bogus") // bounded: becomes "other"
	m.ObserveCloudRequest("compute", "create_image", 202, 300*time.Millisecond)
	m.ObserveCloudRequest("compute", "create_image", 0, 30*time.Second)
	m.ConfigReloaded(false, t0.Add(time.Minute)) // failure keeps the success timestamp

	const want = `
# HELP imagekeeper_build_info A metric with a constant '1' value labelled by the build's version, revision and Go version.
# TYPE imagekeeper_build_info gauge
imagekeeper_build_info{goversion="go1.26.8",revision="abc123",version="1.2.3"} 1
# HELP imagekeeper_cloud_requests_total Requests to the cloud API by service, operation and HTTP status (code="error": no response).
# TYPE imagekeeper_cloud_requests_total counter
imagekeeper_cloud_requests_total{code="202",operation="create_image",service="compute"} 1
imagekeeper_cloud_requests_total{code="error",operation="create_image",service="compute"} 1
# HELP imagekeeper_config_last_reload_success_timestamp_seconds Unix time of the last successful configuration load or reload.
# TYPE imagekeeper_config_last_reload_success_timestamp_seconds gauge
imagekeeper_config_last_reload_success_timestamp_seconds 1.7954874e+09
# HELP imagekeeper_config_last_reload_successful Whether the last configuration load or reload succeeded (1) or failed (0).
# TYPE imagekeeper_config_last_reload_successful gauge
imagekeeper_config_last_reload_successful 0
# HELP imagekeeper_image_create_duration_seconds Time from the createImage request to a good image (active, all volume snapshots available).
# TYPE imagekeeper_image_create_duration_seconds histogram
imagekeeper_image_create_duration_seconds_bucket{policy="web",le="1"} 0
imagekeeper_image_create_duration_seconds_bucket{policy="web",le="5"} 0
imagekeeper_image_create_duration_seconds_bucket{policy="web",le="15"} 0
imagekeeper_image_create_duration_seconds_bucket{policy="web",le="30"} 0
imagekeeper_image_create_duration_seconds_bucket{policy="web",le="60"} 0
imagekeeper_image_create_duration_seconds_bucket{policy="web",le="120"} 1
imagekeeper_image_create_duration_seconds_bucket{policy="web",le="300"} 1
imagekeeper_image_create_duration_seconds_bucket{policy="web",le="600"} 1
imagekeeper_image_create_duration_seconds_bucket{policy="web",le="900"} 1
imagekeeper_image_create_duration_seconds_bucket{policy="web",le="1800"} 1
imagekeeper_image_create_duration_seconds_bucket{policy="web",le="3600"} 1
imagekeeper_image_create_duration_seconds_bucket{policy="web",le="7200"} 2
imagekeeper_image_create_duration_seconds_bucket{policy="web",le="10800"} 2
imagekeeper_image_create_duration_seconds_bucket{policy="web",le="21600"} 2
imagekeeper_image_create_duration_seconds_bucket{policy="web",le="+Inf"} 2
imagekeeper_image_create_duration_seconds_sum{policy="web"} 7290
imagekeeper_image_create_duration_seconds_count{policy="web"} 2
# HELP imagekeeper_images_created_total Images requested by imagekeeper that ended good (active, all snapshots available), failed, or late_good (failed at wait_timeout, completed later).
# TYPE imagekeeper_images_created_total counter
imagekeeper_images_created_total{policy="web",result="failed"} 1
imagekeeper_images_created_total{policy="web",result="good"} 2
imagekeeper_images_created_total{policy="web",result="late_good"} 0
# HELP imagekeeper_images_deleted_total Image deletions by result (deleted, already_gone, protected, failed).
# TYPE imagekeeper_images_deleted_total counter
imagekeeper_images_deleted_total{policy="web",result="already_gone"} 0
imagekeeper_images_deleted_total{policy="web",result="deleted"} 1
imagekeeper_images_deleted_total{policy="web",result="failed"} 0
imagekeeper_images_deleted_total{policy="web",result="protected"} 1
# HELP imagekeeper_last_success_timestamp_seconds Unix time at which the policy's last successful slot run finished (every selected server imaged or skipped with a reason).
# TYPE imagekeeper_last_success_timestamp_seconds gauge
imagekeeper_last_success_timestamp_seconds{policy="web"} 1.7954946e+09
# HELP imagekeeper_next_slot_timestamp_seconds Unix time of the policy's next scheduled slot.
# TYPE imagekeeper_next_slot_timestamp_seconds gauge
imagekeeper_next_slot_timestamp_seconds{policy="web"} 1.7955738e+09
# HELP imagekeeper_servers_selected Servers the policy selected in its latest slot.
# TYPE imagekeeper_servers_selected gauge
imagekeeper_servers_selected{policy="web"} 3
# HELP imagekeeper_servers_skipped_total Selected servers not imaged in a slot, by reason.
# TYPE imagekeeper_servers_skipped_total counter
imagekeeper_servers_skipped_total{policy="web",reason="busy"} 0
imagekeeper_servers_skipped_total{policy="web",reason="error_state"} 1
imagekeeper_servers_skipped_total{policy="web",reason="hook_failed"} 0
imagekeeper_servers_skipped_total{policy="web",reason="in_flight"} 0
imagekeeper_servers_skipped_total{policy="web",reason="locked"} 0
# HELP imagekeeper_slots_total Scheduled slots by outcome (ran, caught_up, missed, skipped_overlap, failed, empty).
# TYPE imagekeeper_slots_total counter
imagekeeper_slots_total{outcome="caught_up",policy="web"} 0
imagekeeper_slots_total{outcome="empty",policy="web"} 0
imagekeeper_slots_total{outcome="failed",policy="web"} 0
imagekeeper_slots_total{outcome="missed",policy="web"} 0
imagekeeper_slots_total{outcome="other",policy="web"} 1
imagekeeper_slots_total{outcome="ran",policy="web"} 1
imagekeeper_slots_total{outcome="skipped_overlap",policy="web"} 0
# HELP imagekeeper_snapshots_deleted_total Volume snapshot deletions by result (deleted, already_gone, in_use, failed).
# TYPE imagekeeper_snapshots_deleted_total counter
imagekeeper_snapshots_deleted_total{policy="web",result="already_gone"} 0
imagekeeper_snapshots_deleted_total{policy="web",result="deleted"} 1
imagekeeper_snapshots_deleted_total{policy="web",result="failed"} 0
imagekeeper_snapshots_deleted_total{policy="web",result="in_use"} 1
`
	names := []string{
		"imagekeeper_build_info", "imagekeeper_cloud_requests_total",
		"imagekeeper_config_last_reload_success_timestamp_seconds", "imagekeeper_config_last_reload_successful",
		"imagekeeper_image_create_duration_seconds", "imagekeeper_images_created_total",
		"imagekeeper_images_deleted_total", "imagekeeper_last_success_timestamp_seconds",
		"imagekeeper_next_slot_timestamp_seconds", "imagekeeper_servers_selected",
		"imagekeeper_servers_skipped_total", "imagekeeper_slots_total", "imagekeeper_snapshots_deleted_total",
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), names...); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(m.cloudDuration); n != 1 {
		t.Errorf("cloud duration series = %d, want 1 (one per service and operation, not per code)", n)
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

func TestMetricsInitAndRemovePolicy(t *testing.T) {
	m, reg := newTestMetrics(t)
	perPolicy := map[string]int{ // series per policy right after InitPolicy
		"imagekeeper_slots_total":                    len(slotOutcomes),
		"imagekeeper_images_created_total":           len(createResults),
		"imagekeeper_servers_skipped_total":          len(skipReasons),
		"imagekeeper_images_deleted_total":           len(imageDeletes),
		"imagekeeper_snapshots_deleted_total":        len(snapDeletes),
		"imagekeeper_images":                         len(imageStates),
		"imagekeeper_image_create_duration_seconds":  1,
		"imagekeeper_servers_without_good_image":     1,
		"imagekeeper_last_success_timestamp_seconds": 0,
	}
	count := func(name string) int {
		t.Helper()
		n, err := testutil.GatherAndCount(reg, name)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	m.InitPolicy("a")
	m.InitPolicy("b")
	m.InitPolicy("a") // idempotent
	for name, per := range perPolicy {
		if got := count(name); got != 2*per {
			t.Errorf("%s: %d series after InitPolicy(a, b), want %d", name, got, 2*per)
		}
	}
	m.SetLastSuccess("a", time.Unix(100, 0))
	m.SetNextSlot("a", time.Unix(200, 0))
	m.ServersSelected("a", 4)
	m.setSchedulePeriod("a", time.Hour)
	m.newestGoodAge.set("a", time.Unix(100, 0))

	m.RemovePolicy("a")
	for name, per := range perPolicy {
		if got := count(name); got != per {
			t.Errorf("%s: %d series after RemovePolicy(a), want %d (b's only)", name, got, per)
		}
	}
	for _, name := range []string{"imagekeeper_next_slot_timestamp_seconds", "imagekeeper_servers_selected",
		"imagekeeper_schedule_period_seconds", "imagekeeper_last_success_timestamp_seconds",
		"imagekeeper_newest_good_image_age_seconds"} {
		if got := count(name); got != 0 {
			t.Errorf("%s: %d series after RemovePolicy(a), want 0", name, got)
		}
	}

	// A run of the removed policy that finishes late must not bring it back.
	m.SlotOutcome("a", store.OutcomeRan)
	m.ImageCreated("a", CreateGood, time.Minute)
	if got := count("imagekeeper_slots_total"); got != len(slotOutcomes) {
		t.Errorf("slots series = %d after a late call for a removed policy, want %d", got, len(slotOutcomes))
	}

	// Re-adding starts from zero, and a policy never initialised gets all its series.
	m.InitPolicy("a")
	m.SlotOutcome("c", store.OutcomeMissed)
	if got := count("imagekeeper_slots_total"); got != 3*len(slotOutcomes) {
		t.Errorf("slots series = %d, want %d", got, 3*len(slotOutcomes))
	}
	if v := testutil.ToFloat64(m.slots.WithLabelValues("a", string(store.OutcomeRan))); v != 0 {
		t.Errorf("re-added policy a: ran = %v, want 0", v)
	}
	if v := testutil.ToFloat64(m.slots.WithLabelValues("c", string(store.OutcomeMissed))); v != 1 {
		t.Errorf("policy c: missed = %v, want 1", v)
	}
	// The last-success memory went with the removal: an earlier time is accepted again.
	m.SetLastSuccess("a", time.Unix(50, 0))
	if v := testutil.ToFloat64(m.lastSuccess.WithLabelValues("a")); v != 50 {
		t.Errorf("last success after re-add = %v, want 50", v)
	}
}

func TestMetricsNextSlotNever(t *testing.T) {
	m, reg := newTestMetrics(t)
	m.SetNextSlot("p", time.Unix(1000, 0))
	m.SetNextSlot("p", time.Time{})
	if n, _ := testutil.GatherAndCount(reg, "imagekeeper_next_slot_timestamp_seconds"); n != 0 {
		t.Errorf("next slot series = %d after a zero time, want 0", n)
	}
}

func TestMetricsRegistersOnInjectedRegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	NewMetrics(reg, BuildInfo{})
	// A second set on the same registry is a programming error and must panic;
	// a second registry is fine (tests, the demo next to a daemon).
	NewMetrics(prometheus.NewRegistry(), BuildInfo{})
	defer func() {
		if recover() == nil {
			t.Error("registering twice on one registry did not panic")
		}
	}()
	NewMetrics(reg, BuildInfo{})
}
