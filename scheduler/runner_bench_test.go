package scheduler

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/imagekeeper/imagekeeper/cloud/openstack"
	"github.com/imagekeeper/imagekeeper/cloud/simcloud"
	"github.com/imagekeeper/imagekeeper/policy"
	"github.com/imagekeeper/imagekeeper/store"
)

// BenchmarkRunSlot1000 reports figures, not a verdict: one slot over 1,000
// image-backed servers on the simulator (over HTTP, through our adapter) with 50 ms
// of latency on every call, a 5 s image build and concurrency 16. It prints the wall
// time, the ideal bound ceil(1000/16) x create latency + build + one poll interval,
// their ratio, cloud calls per server and the process's peak RSS (simulator
// included, since it runs in-process).
//
//	go test -run '^$' -bench BenchmarkRunSlot1000 -benchtime 1x ./scheduler
func BenchmarkRunSlot1000(b *testing.B) {
	const (
		servers     = 1000
		concurrency = 16
		latency     = 50 * time.Millisecond
		build       = 5 * time.Second
		poll        = time.Second
	)
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		h := newHarness(b, withWaitTimeout("10m"),
			withAdapter(func(o *openstack.Options) { o.PageSize = 1000 }),
			withSim(func(o *simcloud.Options) { o.ImageBuildTime, o.SnapshotBuildTime, o.MaxLimit = build, build, 1000 }))
		for j := 0; j < servers; j++ {
			h.sim.AddServer(simcloud.ServerSpec{Name: fmt.Sprintf("web-%04d", j), Tags: []string{"backup=daily"}})
		}
		// Authenticate before the clock starts, then put latency on every call.
		h.sim.SetFault(simcloud.Fault{Op: "*", Latency: latency})
		h.sim.ResetRequests()
		r := h.runner(func(o *runnerOptions) {
			o.Limits = policy.Limits{Concurrency: concurrency}
			o.PollInterval, o.MaxPollInterval = poll, 2*poll
			if os.Getenv("BENCH_DEBUG") != "" {
				o.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
			}
		})
		b.StartTimer()
		start := time.Now()
		rep, err := r.RunSlot(context.Background(), h.cfg.Version, h.p, h.slot, TriggerScheduled)
		wall := time.Since(start)
		b.StopTimer()
		if err != nil {
			b.Fatal(err)
		}
		if rep.Counts.Good != servers {
			b.Fatalf("counts %+v", rep.Counts)
		}
		rows, _ := h.store.Images(context.Background(), store.ImageFilter{})
		var lastCreated, firstGood, lastGood time.Time
		for _, row := range rows {
			if row.CreatedAt.After(lastCreated) {
				lastCreated = row.CreatedAt
			}
			if firstGood.IsZero() || row.ActiveAt.Before(firstGood) {
				firstGood = row.ActiveAt
			}
			if row.ActiveAt.After(lastGood) {
				lastGood = row.ActiveAt
			}
		}
		b.Logf("phases: last id recorded at +%v, first good at +%v, last good at +%v",
			lastCreated.Sub(start).Round(time.Millisecond), firstGood.Sub(start).Round(time.Millisecond), lastGood.Sub(start).Round(time.Millisecond))
		simCalls := 0
		for _, n := range h.sim.Requests() {
			simCalls += n
		}
		ideal := time.Duration(math.Ceil(float64(servers)/concurrency))*latency + build + poll
		b.ReportMetric(wall.Seconds(), "wall_s")
		b.ReportMetric(ideal.Seconds(), "ideal_s")
		b.ReportMetric(wall.Seconds()/ideal.Seconds(), "wall/ideal")
		b.ReportMetric(float64(rep.CloudCalls)/servers, "calls/server")
		b.ReportMetric(float64(simCalls)/servers, "http/server")
		if rss := peakRSSMiB(); rss > 0 {
			b.ReportMetric(rss, "peak_rss_MiB")
		}
		b.Logf("1000 servers: wall %v, ideal %v, ratio %.2f, %.2f cloud calls/server (%.2f HTTP requests/server), peak RSS %.0f MiB",
			wall.Round(time.Millisecond), ideal, wall.Seconds()/ideal.Seconds(), float64(rep.CloudCalls)/servers,
			float64(simCalls)/servers, peakRSSMiB())
	}
}

// peakRSSMiB reads VmHWM from /proc (Linux); 0 elsewhere.
func peakRSSMiB() float64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
			if err == nil {
				return kb / 1024
			}
		}
	}
	return 0
}
