package scheduler

import (
	"runtime"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/imagekeeper/imagekeeper/store"
)

// Label values of imagekeeper_images_created_total{result}.
const (
	CreateGood   = "good"
	CreateFailed = "failed"
	// CreateLateGood counts an image failed by wait_timeout that completed within
	// its late window (it was counted failed before).
	CreateLateGood = "late_good"
)

// Label values of imagekeeper_servers_skipped_total{reason}.
const (
	// SkipErrorState is a server in Nova's ERROR state.
	SkipErrorState = "error_state"
	// SkipBusy is a server with a task in progress (createImage would answer 409).
	SkipBusy = "busy"
	// SkipLocked is a locked server.
	SkipLocked = "locked"
	// SkipInFlight is a server whose image for an earlier slot is still being made.
	SkipInFlight = "in_flight"
	// SkipHookFailed is a server whose pre hook failed under on_failure: skip.
	SkipHookFailed = "hook_failed"
)

// Label values of imagekeeper_hook_runs_total{hook,result}.
const (
	HookPre  = "pre"
	HookPost = "post"
	// HookOK: the command exited 0 within its timeout.
	HookOK = "ok"
	// HookFailed: it could not start or exited non-zero.
	HookFailed = "failed"
	// HookTimeout: it outlived its timeout and its process group was killed.
	HookTimeout = "timeout"
)

var hookResults = []string{HookOK, HookFailed, HookTimeout}

// Label values of imagekeeper_images_deleted_total{result} and
// imagekeeper_snapshots_deleted_total{result}.
const (
	// DeleteConfirmed is a resource we deleted and saw gone (label value "deleted").
	DeleteConfirmed = "deleted"
	// DeleteAlreadyGone is a resource that was gone (404) before we deleted it.
	DeleteAlreadyGone = "already_gone"
	// DeleteProtected is an image Glance refused to delete because it is protected (403).
	DeleteProtected = "protected"
	// DeleteInUse is a volume snapshot that a volume depends on; it is kept.
	DeleteInUse = "in_use"
	// DeleteFailed is any other failure; the deletion is retried later.
	DeleteFailed = "failed"
)

// labelOther replaces a label value outside the known set, so that a caller's typo
// or an unexpected string can never grow the number of series without bound.
const labelOther = "other"

var (
	// The label values of imagekeeper_slots_total{outcome} are the store's final
	// slot outcomes, and those of imagekeeper_images{state} its image states that
	// are still in the cloud (requested counts as creating).
	slotOutcomes  = store.FinalOutcomes
	createResults = []string{CreateGood, CreateFailed, CreateLateGood}
	skipReasons   = []string{SkipErrorState, SkipBusy, SkipLocked, SkipInFlight, SkipHookFailed}
	imageDeletes  = []string{DeleteConfirmed, DeleteAlreadyGone, DeleteProtected, DeleteFailed}
	snapDeletes   = []string{DeleteConfirmed, DeleteAlreadyGone, DeleteInUse, DeleteFailed}
	imageStates   = []store.ImageState{store.ImageGood, store.ImageCreating, store.ImageFailed, store.ImageDeleting, store.ImageKeptProtected}
)

// ImageCreateBuckets are the upper bounds of imagekeeper_image_create_duration_seconds:
// from a second (a tiny image on a fast cloud) to six hours (a large volume-backed
// server whose snapshots crawl).
var ImageCreateBuckets = []float64{1, 5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600}

// CloudRequestBuckets are the upper bounds of imagekeeper_cloud_request_duration_seconds.
var CloudRequestBuckets = []float64{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}

// BuildInfo labels imagekeeper_build_info.
type BuildInfo struct {
	Version   string
	Revision  string
	GoVersion string // runtime.Version() when empty
}

// Metrics is imagekeeper's Prometheus instrumentation. Every method is safe on a nil
// *Metrics (it does nothing), so code paths that run without a registry (CLI
// commands, tests) need no checks.
//
// Per-policy series are created at zero by InitPolicy and removed by RemovePolicy.
// A call for a policy that RemovePolicy removed (and no InitPolicy re-added) is
// dropped, so that a run finishing after a reload removed its policy cannot bring
// the removed series back; a call for a policy never seen initialises it first.
type Metrics struct {
	mu       sync.Mutex
	policies map[string]bool // true: initialised; false: removed

	slots            *prometheus.CounterVec
	verifications    *prometheus.CounterVec
	lastVerified     *prometheus.GaugeVec
	verifyDuration   prometheus.Histogram
	verifyPeriod     *prometheus.GaugeVec
	lastVerifyOK     *prometheus.GaugeVec
	imagesCreated    *prometheus.CounterVec
	serversSkipped   *prometheus.CounterVec
	createDuration   *prometheus.HistogramVec
	imagesDeleted    *prometheus.CounterVec
	snapshotsDeleted *prometheus.CounterVec
	images           *prometheus.GaugeVec
	leftover         prometheus.Gauge
	lastSuccess      *prometheus.GaugeVec
	nextSlot         *prometheus.GaugeVec
	newestGoodAge    *ageCollector
	schedulePeriod   *prometheus.GaugeVec
	serversSelected  *prometheus.GaugeVec
	serversNoGood    *prometheus.GaugeVec
	emptySince       *prometheus.GaugeVec
	cloudRequests    *prometheus.CounterVec
	cloudDuration    *prometheus.HistogramVec
	reloadOK         prometheus.Gauge
	reloadTime       prometheus.Gauge
	cloudUp          prometheus.Gauge
	foreignStamped   prometheus.Gauge
	buildInfo        *prometheus.GaugeVec
	hookRuns         *prometheus.CounterVec
	hookDuration     *prometheus.HistogramVec

	// periods caches the schedule period per policy name, keyed by policy version,
	// because computing it walks a week of cron slots.
	periods map[string]periodCache
	// lastOK is the last success per policy, so that an older time never
	// overwrites a newer one.
	lastOK map[string]time.Time
	// emptySeeded holds the policies whose empty-selection series is known, from a
	// slot's listing or from the store (Refresh reads the store once per policy, so
	// that a restart does not forget a policy that has selected nothing for days).
	emptySeeded map[string]bool
	// emptyAt is the first slot of each policy's current run of empty slots.
	emptyAt map[string]time.Time
}

type periodCache struct {
	version string
	at      time.Time
}

// policyVecs lists every vector labelled by policy, for InitPolicy and RemovePolicy.
func (m *Metrics) policyVecs() []interface {
	DeletePartialMatch(prometheus.Labels) int
} {
	return []interface {
		DeletePartialMatch(prometheus.Labels) int
	}{
		m.slots, m.imagesCreated, m.serversSkipped, m.createDuration, m.imagesDeleted,
		m.verifications, m.lastVerified, m.verifyPeriod, m.lastVerifyOK,
		m.snapshotsDeleted, m.images, m.lastSuccess, m.nextSlot, m.newestGoodAge,
		m.schedulePeriod, m.serversSelected, m.serversNoGood, m.emptySince, m.hookRuns, m.hookDuration,
	}
}

// ageCollector exports imagekeeper_newest_good_image_age_seconds. Refresh records
// the worst recovery point's timestamp per policy; the age is computed at scrape
// time, so that it keeps growing between refreshes as a real age does.
type ageCollector struct {
	desc *prometheus.Desc
	now  func() time.Time

	mu     sync.Mutex
	oldest map[string]time.Time // policy -> oldest newest-good-image request time
}

func newAgeCollector(desc *prometheus.Desc) *ageCollector {
	return &ageCollector{desc: desc, now: time.Now, oldest: map[string]time.Time{}}
}

// Describe implements prometheus.Collector.
func (c *ageCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect implements prometheus.Collector.
func (c *ageCollector) Collect(ch chan<- prometheus.Metric) {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	for policy, t := range c.oldest {
		age := now.Sub(t)
		if age < 0 {
			age = 0
		}
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, age.Seconds(), policy)
	}
}

// set records the policy's worst recovery point; a zero t removes the series.
func (c *ageCollector) set(policy string, t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.IsZero() {
		delete(c.oldest, policy)
		return
	}
	c.oldest[policy] = t
}

// DeletePartialMatch implements the removal RemovePolicy needs.
func (c *ageCollector) DeletePartialMatch(labels prometheus.Labels) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.oldest[labels["policy"]]; !ok {
		return 0
	}
	delete(c.oldest, labels["policy"])
	return 1
}

// metricNamespace prefixes every metric name.
const metricNamespace = "imagekeeper"

// counterVec, gaugeVec, histogramVec and gauge build imagekeeper's metrics, so
// that the namespace is spelt once and each metric reads as its name, help and labels.
func counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metricNamespace, Name: name, Help: help}, labels)
}

func gaugeVec(name, help string, labels ...string) *prometheus.GaugeVec {
	return prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: metricNamespace, Name: name, Help: help}, labels)
}

func histogramVec(name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
	return prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: metricNamespace, Name: name, Help: help, Buckets: buckets,
	}, labels)
}

func gauge(name, help string) prometheus.Gauge {
	return prometheus.NewGauge(prometheus.GaugeOpts{Namespace: metricNamespace, Name: name, Help: help})
}

// policyCounter and policyGauge build a vector labelled by policy first (the
// label RemovePolicy deletes by), then by the given labels.
func policyCounter(name, help string, labels ...string) *prometheus.CounterVec {
	return counterVec(name, help, append([]string{"policy"}, labels...)...)
}

func policyGauge(name, help string) *prometheus.GaugeVec {
	return gaugeVec(name, help, "policy")
}

// NewMetrics creates the metrics and registers them on reg. It panics if a metric
// is already registered there (a programming error, as with MustRegister).
func NewMetrics(reg prometheus.Registerer, build BuildInfo) *Metrics {
	m := &Metrics{
		policies: map[string]bool{},
		periods:  map[string]periodCache{},
		lastOK:   map[string]time.Time{},

		emptySeeded: map[string]bool{},
		emptyAt:     map[string]time.Time{},
		slots: policyCounter("slots_total",
			"Scheduled slots by outcome (ran, caught_up, missed, skipped_overlap, failed, empty).", "outcome"),
		imagesCreated: policyCounter("images_created_total",
			"Images requested by imagekeeper that ended good (active, all snapshots available), failed, or late_good (failed at wait_timeout, completed later).", "result"),
		serversSkipped: policyCounter("servers_skipped_total",
			"Selected servers not imaged in a slot, by reason.", "reason"),
		createDuration: histogramVec("image_create_duration_seconds",
			"Time from the createImage request to a good image (active, all volume snapshots available).",
			ImageCreateBuckets, "policy"),
		imagesDeleted: policyCounter("images_deleted_total",
			"Image deletions by result (deleted, already_gone, protected, failed).", "result"),
		snapshotsDeleted: policyCounter("snapshots_deleted_total",
			"Volume snapshot deletions by result (deleted, already_gone, in_use, failed).", "result"),
		images: gaugeVec("images",
			"Images imagekeeper manages, by lineage state.", "policy", "state"),
		leftover: gauge("leftover_snapshots",
			"Volume snapshots whose image is deleted but which are still in the cloud."),
		lastSuccess: policyGauge("last_success_timestamp_seconds",
			"Unix time at which the policy's last successful slot run finished (every selected server imaged or skipped with a reason)."),
		nextSlot: policyGauge("next_slot_timestamp_seconds",
			"Unix time of the policy's next scheduled slot."),
		newestGoodAge: newAgeCollector(prometheus.NewDesc(metricNamespace+"_newest_good_image_age_seconds",
			"Worst recovery point: age of the oldest, across the policy's live servers, of each server's newest good image.",
			[]string{"policy"}, nil)),
		schedulePeriod: policyGauge("schedule_period_seconds",
			"Longest gap between consecutive slots of the policy's schedule over the coming week."),
		serversSelected: policyGauge("servers_selected",
			"Servers the policy selected in its latest slot."),
		serversNoGood: policyGauge("servers_without_good_image",
			"Live servers of the policy that have no good image."),
		emptySince: policyGauge("selection_empty_since_timestamp_seconds",
			"Unix time of the first slot of the policy's current run of slots that selected no server; absent while its latest slot selected one."),
		cloudRequests: counterVec("cloud_requests_total",
			"Requests to the cloud API by service, operation and HTTP status (code=\"error\": no response).",
			"service", "operation", "code"),
		cloudDuration: histogramVec("cloud_request_duration_seconds",
			"Duration of requests to the cloud API.", CloudRequestBuckets, "service", "operation"),
		reloadOK: gauge("config_last_reload_successful",
			"Whether the last configuration load or reload succeeded (1) or failed (0)."),
		reloadTime: gauge("config_last_reload_success_timestamp_seconds",
			"Unix time of the last successful configuration load or reload."),
		cloudUp: gauge("cloud_up",
			"Whether the cloud answered imagekeeper's last request (1), or it got no answer, a 5xx or a 401, or the daemon has not authenticated yet (0)."),
		foreignStamped: gauge("foreign_stamped_images",
			"Images in the cloud stamped with one of the config's policy names but another owner id (a lost lineage: see imagekeeper recover)."),
		buildInfo: gaugeVec("build_info",
			"A metric with a constant '1' value labelled by the build's version, revision and Go version.",
			"version", "revision", "goversion"),
		verifications: policyCounter("verifications_total",
			"Restore drills by result: ok (booted to ACTIVE, console marker seen when set), failed (refused, ERROR), timeout.", "result"),
		lastVerified: policyGauge("last_verified_timestamp_seconds",
			"Unix time of the last successful restore drill of the policy."),
		verifyDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: metricNamespace, Name: "verify_duration_seconds",
			Help:    "Time from a restore drill's boot request to its result.",
			Buckets: []float64{5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600},
		}),
		verifyPeriod: policyGauge("verify_period_seconds",
			"Longest gap between consecutive restore drills of the policy's verify schedule over the coming week."),
		lastVerifyOK: policyGauge("last_verify_success",
			"1 when the policy's last restore drill booted its image, 0 when it failed or timed out."),
		hookRuns: policyCounter("hook_runs_total",
			"Application-consistency hook runs (image.hooks) by hook (pre, post) and result (ok, failed, timeout).",
			"hook", "result"),
		hookDuration: histogramVec("hook_duration_seconds",
			"Run time of application-consistency hooks, by hook (pre, post).",
			[]float64{0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600}, "policy", "hook"),
	}
	reg.MustRegister(m.hookRuns, m.hookDuration)
	reg.MustRegister(m.verifications, m.lastVerified, m.verifyDuration, m.verifyPeriod, m.lastVerifyOK)
	reg.MustRegister(m.slots, m.imagesCreated, m.serversSkipped, m.createDuration, m.imagesDeleted,
		m.snapshotsDeleted, m.images, m.leftover, m.lastSuccess, m.nextSlot, m.newestGoodAge,
		m.schedulePeriod, m.serversSelected, m.serversNoGood, m.emptySince, m.cloudRequests, m.cloudDuration,
		m.reloadOK, m.reloadTime, m.cloudUp, m.foreignStamped, m.buildInfo)
	if build.GoVersion == "" {
		build.GoVersion = runtime.Version()
	}
	m.buildInfo.WithLabelValues(orUnknown(build.Version), orUnknown(build.Revision), build.GoVersion).Set(1)
	return m
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// known returns v if it is in set, else labelOther.
func known[T ~string](v T, set []T) string {
	for _, s := range set {
		if v == s {
			return string(v)
		}
	}
	return labelOther
}

// InitPolicy creates the policy's series: every counter at 0 for every known label
// value, the histogram, and the image-state gauges at 0. It is idempotent and
// re-adds a policy that RemovePolicy removed.
func (m *Metrics) InitPolicy(policy string) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.initLocked(policy)
}

func (m *Metrics) initLocked(policy string) {
	if m.policies[policy] {
		return
	}
	m.policies[policy] = true
	for _, o := range slotOutcomes {
		m.slots.WithLabelValues(policy, string(o))
	}
	for _, r := range createResults {
		m.imagesCreated.WithLabelValues(policy, r)
	}
	for _, r := range skipReasons {
		m.serversSkipped.WithLabelValues(policy, r)
	}
	for _, r := range imageDeletes {
		m.imagesDeleted.WithLabelValues(policy, r)
	}
	for _, r := range snapDeletes {
		m.snapshotsDeleted.WithLabelValues(policy, r)
	}
	m.createDuration.WithLabelValues(policy)
	for _, s := range imageStates {
		m.images.WithLabelValues(policy, string(s))
	}
	m.serversNoGood.WithLabelValues(policy)
}

// HookRan counts one hook run of the policy and observes its duration.
func (m *Metrics) HookRan(policy, hook, result string, d time.Duration) {
	m.withPolicy(policy, func() {
		m.hookRuns.WithLabelValues(policy, hook, known(result, hookResults)).Inc()
		m.hookDuration.WithLabelValues(policy, hook).Observe(d.Seconds())
	})
}

// RemovePolicy deletes every series of the policy, for a reload that removed it.
// Later calls for the policy are ignored until InitPolicy adds it again.
func (m *Metrics) RemovePolicy(policy string) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.policies[policy] = false
	delete(m.periods, policy)
	delete(m.lastOK, policy)
	delete(m.emptySeeded, policy)
	delete(m.emptyAt, policy)
	for _, v := range m.policyVecs() {
		v.DeletePartialMatch(prometheus.Labels{"policy": policy})
	}
}

// withPolicy runs f under the lock if the policy's series may be written, first
// initialising a policy never seen before.
func (m *Metrics) withPolicy(policy string, f func()) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	state, seen := m.policies[policy]
	if seen && !state {
		return
	}
	if !seen {
		m.initLocked(policy)
	}
	f()
}

// SlotOutcome counts one slot of the policy with its outcome (ran, caught_up,
// missed, skipped_overlap, failed).
func (m *Metrics) SlotOutcome(policy string, outcome store.SlotOutcome) {
	m.withPolicy(policy, func() {
		m.slots.WithLabelValues(policy, known(outcome, slotOutcomes)).Inc()
	})
}

// ImageCreated counts one image that ended good or failed; for a good image d is
// the time from the createImage request to good and feeds the duration histogram.
func (m *Metrics) ImageCreated(policy, result string, d time.Duration) {
	m.withPolicy(policy, func() {
		result = known(result, createResults)
		m.imagesCreated.WithLabelValues(policy, result).Inc()
		if result == CreateGood && d >= 0 {
			m.createDuration.WithLabelValues(policy).Observe(d.Seconds())
		}
	})
}

// ServerSkipped counts one selected server that was not imaged in a slot.
func (m *Metrics) ServerSkipped(policy, reason string) {
	m.withPolicy(policy, func() {
		m.serversSkipped.WithLabelValues(policy, known(reason, skipReasons)).Inc()
	})
}

// ServersSelected records how many servers the policy selected in its latest slot.
func (m *Metrics) ServersSelected(policy string, n int) {
	m.withPolicy(policy, func() {
		m.serversSelected.WithLabelValues(policy).Set(float64(n))
	})
}

// SelectionEmpty records whether the policy's slot at slot selected no server. The
// series keeps the first slot of a run of empty ones, so that an alert can compare
// its age with the schedule period; a slot that selects a server removes it.
func (m *Metrics) SelectionEmpty(policy string, slot time.Time, empty bool) {
	m.withPolicy(policy, func() {
		m.setEmptyLocked(policy, slot, empty, false)
	})
}

// setEmptyLocked sets the empty-selection series; seed (from the store) never
// overrides what a listing already said.
func (m *Metrics) setEmptyLocked(policy string, since time.Time, empty, seed bool) {
	if seed && m.emptySeeded[policy] {
		return
	}
	m.emptySeeded[policy] = true
	if !empty || since.IsZero() {
		delete(m.emptyAt, policy)
		m.emptySince.DeleteLabelValues(policy)
		return
	}
	if _, running := m.emptyAt[policy]; running {
		return // keep the start of the run
	}
	m.emptyAt[policy] = since
	m.emptySince.WithLabelValues(policy).Set(unixSeconds(since))
}

// ImageDeleted counts one image deletion attempt by result (deleted, already_gone,
// protected, failed).
func (m *Metrics) ImageDeleted(policy, result string) {
	m.withPolicy(policy, func() {
		m.imagesDeleted.WithLabelValues(policy, known(result, imageDeletes)).Inc()
	})
}

// SnapshotDeleted counts one volume snapshot deletion attempt by result (deleted,
// already_gone, in_use, failed).
func (m *Metrics) SnapshotDeleted(policy, result string) {
	m.withPolicy(policy, func() {
		m.snapshotsDeleted.WithLabelValues(policy, known(result, snapDeletes)).Inc()
	})
}

// SetNextSlot records the policy's next scheduled slot; a zero t (the schedule
// never fires again) removes the series.
func (m *Metrics) SetNextSlot(policy string, t time.Time) {
	m.withPolicy(policy, func() {
		if t.IsZero() {
			m.nextSlot.DeleteLabelValues(policy)
			return
		}
		m.nextSlot.WithLabelValues(policy).Set(unixSeconds(t))
	})
}

// SetLastSuccess records the time of the policy's last successful slot. An earlier
// time than the one recorded is ignored, so that Refresh (from the store) and the
// runner can both feed it in any order.
func (m *Metrics) SetLastSuccess(policy string, t time.Time) {
	if t.IsZero() {
		return
	}
	m.withPolicy(policy, func() {
		if last, ok := m.lastOK[policy]; ok && !t.After(last) {
			return
		}
		m.lastOK[policy] = t
		m.lastSuccess.WithLabelValues(policy).Set(unixSeconds(t))
	})
}

// ObserveCloudRequest records one request to the cloud API; code is the HTTP status,
// or 0 when no response arrived (recorded as code="error"). It is meant to be fed
// from cloud/openstack's Options.Observe hook.
func (m *Metrics) ObserveCloudRequest(service, operation string, code int, d time.Duration) {
	if m == nil {
		return
	}
	service, operation = orUnknown(service), orUnknown(operation)
	c := "error"
	if code > 0 {
		c = strconv.Itoa(code)
	}
	m.cloudRequests.WithLabelValues(service, operation, c).Inc()
	m.cloudDuration.WithLabelValues(service, operation).Observe(d.Seconds())
}

// ConfigReloaded records the result of a configuration load or reload at t.
func (m *Metrics) ConfigReloaded(ok bool, t time.Time) {
	if m == nil {
		return
	}
	if !ok {
		m.reloadOK.Set(0)
		return
	}
	m.reloadOK.Set(1)
	m.reloadTime.Set(unixSeconds(t))
}

// SetCloudUp records whether the cloud answers (see imagekeeper_cloud_up).
func (m *Metrics) SetCloudUp(up bool) {
	if m == nil {
		return
	}
	v := 0.0
	if up {
		v = 1
	}
	m.cloudUp.Set(v)
}

// SetForeignStamped records how many images carry one of our policy names with
// another owner id (see Reconciler.ForeignStamps).
func (m *Metrics) SetForeignStamped(n int) {
	if m == nil {
		return
	}
	m.foreignStamped.Set(float64(n))
}

func unixSeconds(t time.Time) float64 {
	return float64(t.UnixNano()) / 1e9
}

// setSchedulePeriod records the longest gap between consecutive slots of the
// policy's schedule (see Refresh).
func (m *Metrics) setSchedulePeriod(policy string, d time.Duration) {
	m.withPolicy(policy, func() {
		if d <= 0 {
			m.schedulePeriod.DeleteLabelValues(policy)
			return
		}
		m.schedulePeriod.WithLabelValues(policy).Set(d.Seconds())
	})
}

// verifyResults are the result label values of imagekeeper_verifications_total.
var verifyResults = []string{"ok", "failed", "timeout"}

// InitDrills makes a policy with a verify block export its drill series at zero
// from the start, so that alerts see them before the first drill, and its drill
// period.
func (m *Metrics) InitDrills(policy string, period time.Duration) {
	if m == nil {
		return
	}
	for _, r := range verifyResults {
		m.verifications.WithLabelValues(policy, r)
	}
	m.verifyPeriod.WithLabelValues(policy).Set(period.Seconds())
}

// SetLastVerifyResult sets whether a policy's last drill succeeded (from the
// lineage at start).
func (m *Metrics) SetLastVerifyResult(policy, result string) {
	if m == nil || result == "" {
		return
	}
	v := 0.0
	if result == "ok" {
		v = 1
	}
	m.lastVerifyOK.WithLabelValues(policy).Set(v)
}

// DrillResult records one restore drill.
func (m *Metrics) DrillResult(policy, result string, d time.Duration, now time.Time) {
	if m == nil {
		return
	}
	m.verifications.WithLabelValues(policy, result).Inc()
	m.verifyDuration.Observe(d.Seconds())
	m.SetLastVerifyResult(policy, result)
	if result == "ok" {
		m.lastVerified.WithLabelValues(policy).Set(float64(now.Unix()))
	}
}

// SetLastVerified sets a policy's last successful drill time from the lineage (at
// start).
func (m *Metrics) SetLastVerified(policy string, at time.Time) {
	if m == nil || at.IsZero() {
		return
	}
	m.lastVerified.WithLabelValues(policy).Set(float64(at.Unix()))
}
