package policy_test

import (
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"pgregory.net/rapid"

	"github.com/imagekeeper/imagekeeper/policy"
)

// propZones mixes a zone without DST, whole-hour DST on both hemispheres' calendars,
// a half-hour offset and a half-hour DST shift.
var propZones = []string{"UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"}

// propNow sits a few hours after New York's and a week after Berlin's fall-back, so
// hour-step histories cross DST changes and day-step ones cross Feb 29, 2024.
var propNow = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

type retainCase struct {
	imgs []policy.RetentionImage
	r    policy.Retention
	loc  *time.Location
	now  time.Time
}

// genCase draws one server's history. Times are multiples of a drawn step so that
// ties (same slot, several images) and DST-crossing runs are common, and a few lie
// after now.
func genCase(t *rapid.T) retainCase {
	loc, err := time.LoadLocation(rapid.SampledFrom(propZones).Draw(t, "zone"))
	if err != nil {
		t.Fatal(err)
	}
	step := rapid.SampledFrom([]time.Duration{20 * time.Minute, time.Hour, 6 * time.Hour, 24 * time.Hour, 7 * 24 * time.Hour}).Draw(t, "step")
	n := rapid.IntRange(0, 40).Draw(t, "n")
	imgs := make([]policy.RetentionImage, n)
	for i := range imgs {
		k := rapid.IntRange(-900, 3).Draw(t, "k")
		at := propNow.Add(time.Duration(k) * step).Add(time.Duration(rapid.IntRange(0, 1).Draw(t, "jitter")) * 7 * time.Minute)
		img := policy.RetentionImage{ID: fmt.Sprintf("i%02d", i), Time: at}
		switch s := rapid.IntRange(0, 9).Draw(t, "status"); {
		case s <= 5:
			img.Status = policy.RetentionGood
		case s <= 7:
			img.Status = policy.RetentionFailed
			img.FailReason = rapid.SampledFrom([]string{"", "snapshot error", "wait timeout"}).Draw(t, "reason")
			img.WaitTimeout = rapid.SampledFrom([]time.Duration{0, 30 * time.Minute, 2 * time.Hour}).Draw(t, "wait")
			if rapid.Bool().Draw(t, "failedAtKnown") {
				img.FailedAt = at.Add(time.Duration(rapid.IntRange(0, 600).Draw(t, "failedAfter")) * time.Minute)
			}
		default:
			img.Status = policy.RetentionInProgress
		}
		imgs[i] = img
	}
	r := policy.Retention{
		KeepLast:    rapid.IntRange(0, 4).Draw(t, "last"),
		KeepHourly:  rapid.IntRange(0, 4).Draw(t, "hourly"),
		KeepDaily:   rapid.IntRange(0, 4).Draw(t, "daily"),
		KeepWeekly:  rapid.IntRange(0, 3).Draw(t, "weekly"),
		KeepMonthly: rapid.IntRange(0, 3).Draw(t, "monthly"),
		KeepYearly:  rapid.IntRange(0, 2).Draw(t, "yearly"),
		KeepWithin:  rapid.SampledFrom([]time.Duration{0, time.Hour, 90 * time.Minute, 24 * time.Hour, 7 * 24 * time.Hour}).Draw(t, "within"),
		// Below 1 on purpose: Retain must clamp it (the loader refuses it anyway).
		MinKeep: rapid.IntRange(-1, 6).Draw(t, "minKeep"),
	}
	return retainCase{imgs: imgs, r: r, loc: loc, now: propNow}
}

func (c retainCase) run() []policy.Decision { return policy.Retain(c.imgs, c.r, c.loc, c.now) }

// newestGood returns the index of the newest good image that is not in the future
// (ties: smallest id), or -1.
func newestGood(imgs []policy.RetentionImage, now time.Time) int {
	best := -1
	for i, im := range imgs {
		if im.Status != policy.RetentionGood || im.Time.After(now) {
			continue
		}
		if best < 0 || im.Time.After(imgs[best].Time) || im.Time.Equal(imgs[best].Time) && im.ID < imgs[best].ID {
			best = i
		}
	}
	return best
}

// TestRetainInvariants checks, over random histories, the properties retention
// promises. Each comment says why the property holds, by construction of Retain.
func TestRetainInvariants(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		c := genCase(t)
		ds := c.run()
		byID := map[string]policy.RetentionImage{}
		for _, im := range c.imgs {
			byID[im.ID] = im
		}

		// 1. kept + deleted = input, each image exactly once. Holds because Retain
		// writes one decision per position of a permutation of the input indices.
		if len(ds) != len(c.imgs) {
			t.Fatalf("%d decisions for %d images", len(ds), len(c.imgs))
		}
		seen := map[string]bool{}
		for _, d := range ds {
			if _, ok := byID[d.ImageID]; !ok || seen[d.ImageID] {
				t.Fatalf("decision for unknown or repeated image %q", d.ImageID)
			}
			seen[d.ImageID] = true
		}

		keptGood, good := 0, 0
		minKeep := max(c.r.MinKeep, 1)
		for _, d := range ds {
			im := byID[d.ImageID]
			// 2. Every verdict has a reason. Holds because every branch of pass 3
			// appends at least one reason.
			if len(d.Reasons) == 0 {
				t.Fatalf("%s: no reason", d.ImageID)
			}
			future := im.Time.After(c.now)
			// 3. Images in the future are never deleted, whatever their status.
			// Holds because the future test is the first case of pass 3 and never
			// clears keep; pass 1 and 2 skip them, so no rule can decide about them.
			if future && !d.Keep {
				t.Fatalf("%s: in the future (%v > now) but deleted", d.ImageID, im.Time)
			}
			// 4. Images in progress are never deleted: only the waiter may declare
			// them failed. Holds because their branch (default) keeps.
			if im.Status == policy.RetentionInProgress && !d.Keep {
				t.Fatalf("%s: in progress but deleted", d.ImageID)
			}
			// 5. A failed image goes exactly when now is past its deadline (and it is
			// not in the future), with its failure as the reason.
			if im.Status == policy.RetentionFailed && !future {
				if want := c.now.After(im.FailedDeadline()); d.Keep == want {
					t.Fatalf("%s: failed, deadline %v, now %v: keep=%v", d.ImageID, im.FailedDeadline(), c.now, d.Keep)
				}
				if !strings.HasPrefix(d.Reasons[0], "failed: ") {
					t.Fatalf("%s: failed image's first reason = %q", d.ImageID, d.Reasons[0])
				}
			}
			if im.Status == policy.RetentionGood {
				good++
				if d.Keep {
					keptGood++
				} else if !reflect.DeepEqual(d.Reasons, []string{policy.ReasonNoRule}) {
					t.Fatalf("%s: deleted good image with reasons %q", d.ImageID, d.Reasons)
				}
			}
		}
		// 6. Never below min_keep good images when that many exist. Holds because
		// pass 2 walks the good images of the past newest first and keeps until
		// min_keep are kept; good images in the future are all kept on top.
		if keptGood < min(minKeep, good) {
			t.Fatalf("kept %d good images of %d, min_keep %d", keptGood, good, minKeep)
		}
		// 7. The newest good image is kept. If it is in the future, invariant 3;
		// otherwise min_keep is at least 1 and pass 2 starts with it (and every
		// non-zero rule keeps it too: it is the first of keep_last, the newest of its
		// calendar period, and the anchor of keep_within).
		if i := newestGood(c.imgs, c.now); i >= 0 {
			for _, d := range ds {
				if d.ImageID == c.imgs[i].ID && !d.Keep {
					t.Fatalf("newest good image %s deleted", d.ImageID)
				}
			}
		}

		// 8. The result does not depend on the input order. Holds because Retain
		// sorts by (time, id, status) before deciding, a total order for unique ids.
		perm := rapid.Permutation(c.imgs).Draw(t, "perm")
		if got := policy.Retain(perm, c.r, c.loc, c.now); !reflect.DeepEqual(got, ds) {
			t.Fatalf("permuted input changed the result:\n%v\nvs\n%v", got, ds)
		}

		// 9. Failed and in-progress images never count towards a rule: removing them
		// leaves every decision about a good image unchanged. Holds because passes
		// 1 and 2 skip every image that is not good, and the anchor of keep_within
		// is a good image.
		var goods []policy.RetentionImage
		for _, im := range c.imgs {
			if im.Status == policy.RetentionGood {
				goods = append(goods, im)
			}
		}
		onlyGood := policy.Retain(goods, c.r, c.loc, c.now)
		var fromAll []policy.Decision
		for _, d := range ds {
			if byID[d.ImageID].Status == policy.RetentionGood {
				fromAll = append(fromAll, d)
			}
		}
		if len(onlyGood) != 0 || len(fromAll) != 0 {
			if !reflect.DeepEqual(onlyGood, fromAll) {
				t.Fatalf("failed/in-progress images changed the good images' decisions:\n%v\nvs\n%v", fromAll, onlyGood)
			}
		}
	})
}

// TestRetainRulesAreOred checks that strengthening one rule never deletes an image
// that was kept, when min_keep is 1. Holds because each rule's kept set grows with
// its parameter (keep_last N+1 keeps a superset of N; N+1 calendar periods include
// the N newest; a longer keep_within reaches further back from the same anchor), the
// verdict is their union, and a floor of 1 only ever adds the newest good image,
// which any non-zero rule keeps anyway. (With a higher floor the property fails by
// design: a rule that keeps an old image can satisfy the floor that used to keep a
// recent one.)
func TestRetainRulesAreOred(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		c := genCase(t)
		c.r.MinKeep = 1
		before := c.run()
		stronger := c
		switch rapid.IntRange(0, 6).Draw(t, "rule") {
		case 0:
			stronger.r.KeepLast++
		case 1:
			stronger.r.KeepHourly++
		case 2:
			stronger.r.KeepDaily++
		case 3:
			stronger.r.KeepWeekly++
		case 4:
			stronger.r.KeepMonthly++
		case 5:
			stronger.r.KeepYearly++
		case 6:
			stronger.r.KeepWithin += time.Duration(rapid.IntRange(1, 100).Draw(t, "more")) * time.Hour
		}
		after := stronger.run()
		for i := range before {
			if before[i].Keep && !after[i].Keep {
				t.Fatalf("%s kept by %v (%q) but deleted by %v", before[i].ImageID, c.r, before[i].Reasons, stronger.r)
			}
		}
	})
}

// TestRetainMatchesOracle compares Retain with a deliberately naive restatement of
// the rules (string labels, maps, one rule at a time), reasons included.
func TestRetainMatchesOracle(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		c := genCase(t)
		want := oracle(c)
		for _, d := range c.run() {
			if w := want[d.ImageID]; !reflect.DeepEqual(d.Reasons, w) {
				t.Fatalf("%s: reasons %q, oracle says %q", d.ImageID, d.Reasons, w)
			}
		}
	})
}

// oracle restates the rules of Retain for good images of the past; other images get
// the reasons Retain gives them.
func oracle(c retainCase) map[string][]string {
	out := map[string][]string{}
	var goods []policy.RetentionImage
	for _, im := range c.imgs {
		switch {
		case im.Time.After(c.now):
			r := []string{"in the future"}
			if im.Status == policy.RetentionFailed {
				r = append(r, "failed: "+orUnknown(im.FailReason))
			} else if im.Status == policy.RetentionInProgress {
				r = append(r, "in progress")
			}
			out[im.ID] = r
		case im.Status == policy.RetentionFailed:
			out[im.ID] = []string{"failed: " + orUnknown(im.FailReason)}
			if !c.now.After(im.FailedDeadline()) {
				out[im.ID] = append(out[im.ID], "failed, within grace")
			}
		case im.Status == policy.RetentionInProgress:
			out[im.ID] = []string{"in progress"}
		default:
			goods = append(goods, im)
		}
	}
	sort.Slice(goods, func(i, j int) bool {
		if !goods[i].Time.Equal(goods[j].Time) {
			return goods[i].Time.After(goods[j].Time)
		}
		return goods[i].ID < goods[j].ID
	})
	add := func(id, r string) { out[id] = append(out[id], r) }
	for i := 0; i < len(goods) && i < c.r.KeepLast; i++ {
		add(goods[i].ID, fmt.Sprintf("keep_last %d/%d", i+1, c.r.KeepLast))
	}
	calendars := []struct {
		n     int
		name  string
		label func(time.Time) string
	}{
		{c.r.KeepHourly, "keep_hourly", func(t time.Time) string { return t.Format("2006-01-02T15:00Z07:00") }},
		{c.r.KeepDaily, "keep_daily", func(t time.Time) string { return t.Format("2006-01-02") }},
		{c.r.KeepWeekly, "keep_weekly", func(t time.Time) string { y, w := t.ISOWeek(); return fmt.Sprintf("%d-W%02d", y, w) }},
		{c.r.KeepMonthly, "keep_monthly", func(t time.Time) string { return t.Format("2006-01") }},
		{c.r.KeepYearly, "keep_yearly", func(t time.Time) string { return t.Format("2006") }},
	}
	for _, cal := range calendars {
		periods := map[string]bool{}
		for _, g := range goods {
			l := cal.label(g.Time.In(c.loc))
			if periods[l] {
				continue // not the newest of its period
			}
			if len(periods) == cal.n {
				break
			}
			periods[l] = true
			add(g.ID, cal.name+" "+l)
		}
	}
	if c.r.KeepWithin > 0 && len(goods) > 0 {
		for _, g := range goods {
			if goods[0].Time.Sub(g.Time) < c.r.KeepWithin {
				add(g.ID, "keep_within "+policy.FormatRetentionDuration(c.r.KeepWithin))
			}
		}
	}
	kept := 0
	for _, g := range goods {
		if len(out[g.ID]) > 0 {
			kept++
		}
	}
	for _, g := range goods {
		if kept >= max(c.r.MinKeep, 1) {
			break
		}
		if len(out[g.ID]) == 0 {
			add(g.ID, "min_keep")
			kept++
		}
	}
	for _, g := range goods {
		if len(out[g.ID]) == 0 {
			out[g.ID] = []string{"no rule keeps it"}
		}
	}
	// Retain lists reasons in rule order; so does the oracle, since it applies the
	// rules in that order. Make sure nothing was listed twice.
	for id, rs := range out {
		if len(slices.Compact(slices.Clone(rs))) != len(rs) {
			panic("oracle listed a reason twice for " + id)
		}
	}
	return out
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown reason"
	}
	return s
}

// TestRetainerReusedDecidesLikeRetain checks that a Retainer carried from one server
// to the next (its scratch holding a previous, possibly larger, input's order,
// masks, buckets and reasons) decides each input exactly as a fresh Retain does.
func TestRetainerReusedDecidesLikeRetain(t *testing.T) {
	var rt policy.Retainer
	rapid.Check(t, func(t *rapid.T) {
		for i, n := 0, rapid.IntRange(1, 4).Draw(t, "servers"); i < n; i++ {
			c := genCase(t)
			want := c.run()
			got := rt.Retain(c.imgs, c.r, c.loc, c.now)
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("server %d: reused Retainer decided\n%+v\nfresh Retain decided\n%+v", i, got, want)
			}
		}
	})
}
