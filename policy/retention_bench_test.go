package policy_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/imagekeeper/imagekeeper/policy"
)

// BenchmarkRetainMillion plans retention for 10,000 servers with 100 images each
// (one million lineage rows): daily slots at 02:30 in Berlin, one image in twenty
// failed, a GFS rule set. One op is the whole million. Run it with
//
//	go test ./policy -run '^$' -bench RetainMillion -benchmem -count 3
//
// The store query that feeds it is measured in scheduler (BenchmarkPrunePlan).
// BenchmarkRetainerMillion is the same with one Retainer reused for every server,
// as the prune decides.
func BenchmarkRetainMillion(b *testing.B) { benchRetainMillion(b, nil) }

func BenchmarkRetainerMillion(b *testing.B) { benchRetainMillion(b, &policy.Retainer{}) }

func benchRetainMillion(b *testing.B, rt *policy.Retainer) {
	const servers, perServer = 10_000, 100
	loc, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		b.Fatal(err)
	}
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, loc)
	r := policy.Retention{KeepLast: 3, KeepDaily: 7, KeepWeekly: 4, KeepMonthly: 12, KeepWithin: 48 * time.Hour, MinKeep: 1}
	histories := make([][]policy.RetentionImage, servers)
	for s := range histories {
		h := make([]policy.RetentionImage, perServer)
		for i := range h {
			slot := time.Date(2026, 11, 30-i, 2, 30, 0, 0, loc)
			h[i] = policy.RetentionImage{ID: fmt.Sprintf("img-%05d-%03d", s, i), Time: slot, Status: policy.RetentionGood, WaitTimeout: 2 * time.Hour}
			if (s+i)%20 == 0 {
				h[i].Status, h[i].FailReason = policy.RetentionFailed, "snapshot error"
			}
		}
		histories[s] = h
	}
	b.ReportAllocs()
	b.ResetTimer()
	deleted := 0
	for b.Loop() {
		deleted = 0
		for _, h := range histories {
			for _, d := range rt.Retain(h, r, loc, now) {
				if !d.Keep {
					deleted++
				}
			}
		}
	}
	b.StopTimer()
	if deleted == 0 || deleted >= servers*perServer {
		b.Fatalf("implausible plan: %d deletions of %d", deleted, servers*perServer)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(servers*perServer), "ns/image")
	b.ReportMetric(float64(deleted), "deletions")
}
