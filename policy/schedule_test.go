package policy

import (
	"fmt"
	"sort"
	"testing"
	"time"
)

func mustLoc(t testing.TB, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatalf("load location %s: %v", name, err)
	}
	return loc
}

func mustSchedule(t testing.TB, spec, zone string) *Schedule {
	t.Helper()
	s, err := parseSchedule(spec, mustLoc(t, zone), true)
	if err != nil {
		t.Fatalf("parse %q: %v", spec, err)
	}
	return s
}

// at parses a wall time with an explicit offset, so that rows say which of two
// identical wall times they mean.
func at(t testing.TB, s string) time.Time {
	t.Helper()
	v, err := time.Parse(time.RFC3339, s)
	if err != nil {
		t.Fatalf("parse %s: %v", s, err)
	}
	return v
}

// TestNextDSTTable spells out the documented semantics on both transitions of two
// real zones: a gap slot fires at the first instant after the gap, an overlap slot
// fires once, at its first occurrence.
func TestNextDSTTable(t *testing.T) {
	rows := []struct {
		zone, spec, after string
		want              []string
	}{
		// America/New_York, spring forward 2024-03-10 02:00 EST -> 03:00 EDT.
		{"America/New_York", "30 2 * * *", "2024-03-09T03:00:00-05:00",
			[]string{"2024-03-10T03:00:00-04:00", "2024-03-11T02:30:00-04:00"}},
		{"America/New_York", "0 * * * *", "2024-03-10T00:30:00-05:00",
			[]string{"2024-03-10T01:00:00-05:00", "2024-03-10T03:00:00-04:00", "2024-03-10T04:00:00-04:00"}},
		{"America/New_York", "*/15 * * * *", "2024-03-10T01:40:00-05:00",
			[]string{"2024-03-10T01:45:00-05:00", "2024-03-10T03:00:00-04:00", "2024-03-10T03:15:00-04:00"}},
		// America/New_York, fall back 2024-11-03 02:00 EDT -> 01:00 EST.
		{"America/New_York", "30 1 * * *", "2024-11-02T12:00:00-04:00",
			[]string{"2024-11-03T01:30:00-04:00", "2024-11-04T01:30:00-05:00"}},
		{"America/New_York", "0 * * * *", "2024-11-03T00:30:00-04:00",
			[]string{"2024-11-03T01:00:00-04:00", "2024-11-03T02:00:00-05:00", "2024-11-03T03:00:00-05:00"}},
		{"America/New_York", "*/15 * * * *", "2024-11-03T01:40:00-04:00",
			[]string{"2024-11-03T01:45:00-04:00", "2024-11-03T02:00:00-05:00"}},
		// after inside the second pass of the overlap: the first pass already fired.
		{"America/New_York", "*/15 * * * *", "2024-11-03T01:20:00-05:00",
			[]string{"2024-11-03T02:00:00-05:00", "2024-11-03T02:15:00-05:00"}},
		// Europe/Berlin, spring forward 2024-03-31 02:00 CET -> 03:00 CEST.
		{"Europe/Berlin", "30 2 * * *", "2024-03-30T12:00:00+01:00",
			[]string{"2024-03-31T03:00:00+02:00", "2024-04-01T02:30:00+02:00"}},
		{"Europe/Berlin", "0 * * * *", "2024-03-31T00:30:00+01:00",
			[]string{"2024-03-31T01:00:00+01:00", "2024-03-31T03:00:00+02:00", "2024-03-31T04:00:00+02:00"}},
		// Europe/Berlin, fall back 2024-10-27 03:00 CEST -> 02:00 CET.
		{"Europe/Berlin", "30 2 * * *", "2024-10-26T12:00:00+02:00",
			[]string{"2024-10-27T02:30:00+02:00", "2024-10-28T02:30:00+01:00"}},
		{"Europe/Berlin", "0 * * * *", "2024-10-27T01:30:00+02:00",
			[]string{"2024-10-27T02:00:00+02:00", "2024-10-27T03:00:00+01:00"}},
		{"Europe/Berlin", "*/15 * * * *", "2024-10-27T02:50:00+02:00",
			[]string{"2024-10-27T03:00:00+01:00", "2024-10-27T03:15:00+01:00"}},
	}
	for _, r := range rows {
		t.Run(r.zone+" "+r.spec+" "+r.after, func(t *testing.T) {
			s := mustSchedule(t, r.spec, r.zone)
			cur := at(t, r.after)
			for i, w := range r.want {
				got := s.Next(cur)
				if !got.Equal(at(t, w)) {
					t.Fatalf("slot %d after %s: got %s, want %s", i, cur.Format(time.RFC3339), got.Format(time.RFC3339), w)
				}
				if got.Location() != s.Location {
					t.Fatalf("slot %d in %v, want %v", i, got.Location(), s.Location)
				}
				cur = got
			}
		})
	}
}

// oracleSlots computes the slots between from and to by brute force, independently
// of the schedule code: scan every minute, note the first instant of each wall
// minute, and map a wall minute that never occurs to the first instant whose wall
// clock is past it.
func oracleSlots(loc *time.Location, match func(wall time.Time) bool, from, to time.Time) []time.Time {
	wallOf := func(t time.Time) time.Time {
		l := t.In(loc)
		return time.Date(l.Year(), l.Month(), l.Day(), l.Hour(), l.Minute(), 0, 0, time.UTC)
	}
	first := map[time.Time]time.Time{}
	var instants, maxWall []time.Time
	for t := from.Truncate(time.Minute).Add(-40 * time.Hour); !t.After(to.Add(40 * time.Hour)); t = t.Add(time.Minute) {
		w := wallOf(t)
		if _, ok := first[w]; !ok {
			first[w] = t
		}
		instants = append(instants, t)
		// The running maximum of the wall clock is monotonic, so the first instant
		// whose wall clock passes w is found by binary search.
		if len(maxWall) > 0 && maxWall[len(maxWall)-1].After(w) {
			w = maxWall[len(maxWall)-1]
		}
		maxWall = append(maxWall, w)
	}
	var out []time.Time
	for w := wallOf(from).Add(-26 * time.Hour); w.Before(wallOf(to).Add(26 * time.Hour)); w = w.Add(time.Minute) {
		if !match(w) {
			continue
		}
		inst, ok := first[w]
		if !ok {
			i := sort.Search(len(maxWall), func(i int) bool { return maxWall[i].After(w) })
			inst = instants[i]
		}
		if inst.After(from) && !inst.After(to) && (len(out) == 0 || !out[len(out)-1].Equal(inst)) {
			out = append(out, inst)
		}
	}
	// Wall minutes map to instants monotonically, so out is already sorted; the
	// assertion below would catch it if not.
	return out
}

// TestNextMatchesOracle walks Next across DST transitions in several zones,
// including half-hour shifts (Lord Howe), midnight transitions (Sao Paulo 2018)
// and a skipped calendar day (Apia 2011), and compares with the brute force.
func TestNextMatchesOracle(t *testing.T) {
	specs := []struct {
		spec  string
		match func(w time.Time) bool
	}{
		{"0 * * * *", func(w time.Time) bool { return w.Minute() == 0 }},
		{"30 2 * * *", func(w time.Time) bool { return w.Hour() == 2 && w.Minute() == 30 }},
		{"*/15 * * * *", func(w time.Time) bool { return w.Minute()%15 == 0 }},
		{"30 1 * * *", func(w time.Time) bool { return w.Hour() == 1 && w.Minute() == 30 }},
		{"@daily", func(w time.Time) bool { return w.Hour() == 0 && w.Minute() == 0 }},
		{"* * * * *", func(time.Time) bool { return true }},
		{"10 0-3 * * 0,6", func(w time.Time) bool {
			return w.Minute() == 10 && w.Hour() <= 3 && (w.Weekday() == time.Sunday || w.Weekday() == time.Saturday)
		}},
	}
	days := []struct{ zone, day string }{
		{"America/New_York", "2024-03-10"},
		{"America/New_York", "2024-11-03"},
		{"Europe/Berlin", "2024-03-31"},
		{"Europe/Berlin", "2024-10-27"},
		{"Australia/Lord_Howe", "2024-04-07"},
		{"Australia/Lord_Howe", "2024-10-06"},
		{"America/Sao_Paulo", "2018-11-04"},
		{"America/Sao_Paulo", "2019-02-16"},
		{"Pacific/Apia", "2011-12-29"},
		{"UTC", "2024-03-10"},
	}
	for _, d := range days {
		for _, sp := range specs {
			t.Run(fmt.Sprintf("%s %s %s", d.zone, d.day, sp.spec), func(t *testing.T) {
				loc := mustLoc(t, d.zone)
				s := mustSchedule(t, sp.spec, d.zone)
				day, err := time.ParseInLocation("2006-01-02", d.day, loc)
				if err != nil {
					t.Fatal(err)
				}
				from, to := day.Add(-6*time.Hour), day.Add(30*time.Hour)
				want := oracleSlots(loc, sp.match, from, to)
				if len(want) == 0 {
					t.Fatal("oracle found no slots; the test range is wrong")
				}
				var got []time.Time
				for cur := s.Next(from); !cur.IsZero() && !cur.After(to); cur = s.Next(cur) {
					got = append(got, cur)
				}
				if len(got) != len(want) {
					t.Fatalf("got %d slots, want %d\n got: %v\nwant: %v", len(got), len(want), got, want)
				}
				for i := range want {
					if !got[i].Equal(want[i]) {
						t.Fatalf("slot %d: got %s, want %s", i, got[i].Format(time.RFC3339), want[i].Format(time.RFC3339))
					}
				}
				// Latest is Next's inverse: at a slot it returns that slot, just
				// before it the previous one.
				for i, slot := range got {
					if l := s.Latest(slot); !l.Equal(slot) {
						t.Fatalf("Latest(%s) = %s, want the slot itself", slot.Format(time.RFC3339), l.Format(time.RFC3339))
					}
					if i == 0 {
						continue
					}
					for _, probe := range []time.Time{slot.Add(-time.Nanosecond), got[i-1].Add(slot.Sub(got[i-1]) / 2)} {
						if l := s.Latest(probe); !l.Equal(got[i-1]) {
							t.Fatalf("Latest(%s) = %s, want %s", probe.Format(time.RFC3339Nano), l.Format(time.RFC3339), got[i-1].Format(time.RFC3339))
						}
					}
				}
			})
		}
	}
}

func TestEveryAlignedToEpoch(t *testing.T) {
	s := mustSchedule(t, "@every 7m", "Europe/Berlin")
	// A restart at any moment must produce the same slots: multiples of 7 minutes
	// since 1970-01-01T00:00:00Z.
	for _, after := range []time.Time{
		time.Date(2024, 3, 31, 0, 59, 59, 999, time.UTC),
		time.Date(2024, 10, 27, 0, 30, 0, 0, time.UTC),
		time.Date(1969, 12, 31, 23, 59, 0, 0, time.UTC),
	} {
		n := s.Next(after)
		if !n.After(after) || n.Sub(after) > 7*time.Minute {
			t.Errorf("Next(%s) = %s: not the first slot after", after, n)
		}
		if n.Unix()%(7*60) != 0 || n.Nanosecond() != 0 {
			t.Errorf("Next(%s) = %s: not a multiple of 7m since the epoch", after, n)
		}
		if l := s.Latest(n); !l.Equal(n) {
			t.Errorf("Latest(%s) = %s, want the slot", n, l)
		}
		if l := s.Latest(n.Add(-time.Nanosecond)); !l.Equal(n.Add(-7 * time.Minute)) {
			t.Errorf("Latest just before %s = %s", n, l)
		}
		if n.Location() != s.Location {
			t.Errorf("Next in %v, want %v", n.Location(), s.Location)
		}
	}
}

func TestLatestNone(t *testing.T) {
	// Feb 29 at 12:00: within ten years back there is one, but not before the
	// first ever such date in our window.
	s := mustSchedule(t, "0 12 29 2 *", "UTC")
	got := s.Latest(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC))
	if want := time.Date(2024, 2, 29, 12, 0, 0, 0, time.UTC); !got.Equal(want) {
		t.Fatalf("Latest = %s, want %s", got, want)
	}
	// Across 2100, which is not a leap year, Next still finds 2104.
	got = s.Next(time.Date(2096, 3, 1, 0, 0, 0, 0, time.UTC))
	if want := time.Date(2104, 2, 29, 12, 0, 0, 0, time.UTC); !got.Equal(want) {
		t.Fatalf("Next across 2100 = %s, want %s", got, want)
	}
}

func TestParseScheduleErrors(t *testing.T) {
	rows := []struct {
		spec     string
		subMin   bool
		wantErr  bool
		wantEach time.Duration
	}{
		{"CRON_TZ=UTC", false, true, 0},
		{"TZ=UTC 0 0 * * *", false, true, 0},
		{"0 0 31 2 *", false, true, 0},
		{"0 0 30 2 *", false, true, 0},
		{"0 0 0 * * *", false, true, 0},
		{"@every 30s", false, true, 0},
		{"@every 30s", true, false, 30 * time.Second},
		{"@every 1d", false, false, 24 * time.Hour},
		{"@every 1500ms", true, true, 0},
		{"@every 0s", true, true, 0},
		{"@every", false, true, 0},
		{"@reboot", false, true, 0},
		{"0 0 * * 7", false, true, 0},
		{"61 * * * *", false, true, 0},
		{"@weekly", false, false, 0},
	}
	for _, r := range rows {
		s, err := parseSchedule(r.spec, time.UTC, r.subMin)
		if (err != nil) != r.wantErr {
			t.Errorf("parseSchedule(%q, subMinute=%v): err = %v, want error %v", r.spec, r.subMin, err, r.wantErr)
			continue
		}
		if err == nil && s.Every != r.wantEach {
			t.Errorf("parseSchedule(%q).Every = %v, want %v", r.spec, s.Every, r.wantEach)
		}
	}
}

func TestPeriod(t *testing.T) {
	for spec, want := range map[string]time.Duration{
		"30 2 * * *":     24 * time.Hour,
		"*/15 2 * * *":   15 * time.Minute,
		"0 3 * * 1-5":    24 * time.Hour,
		"@weekly":        7 * 24 * time.Hour,
		"@every 6h":      6 * time.Hour,
		"0 0 1,15 * *":   14 * 24 * time.Hour,
		"0 */6 * * *":    6 * time.Hour,
		"0 0 1 1,7 *":    181 * 24 * time.Hour,
		"0 12 * * 0,3,5": 48 * time.Hour,
	} {
		if got := mustSchedule(t, spec, "UTC").Period(); got != want {
			t.Errorf("Period(%q) = %v, want %v", spec, got, want)
		}
	}
}

// BenchmarkNext measures the cost per call that the daemon pays for each policy
// on each tick and on start.
func BenchmarkNext(b *testing.B) {
	for _, c := range []struct{ spec, zone string }{
		{"30 2 * * *", "America/New_York"},
		{"0 * * * *", "Europe/Berlin"},
		{"*/15 * * * *", "UTC"},
		{"0 3 1 */3 *", "Asia/Shanghai"},
		{"@every 6h", "Europe/Berlin"},
	} {
		s := mustSchedule(b, c.spec, c.zone)
		start := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
		b.Run(c.zone+" "+c.spec, func(b *testing.B) {
			cur := start
			for i := 0; i < b.N; i++ {
				cur = s.Next(cur)
				if cur.Year() > 2030 {
					cur = start
				}
			}
		})
	}
}

func BenchmarkLatest(b *testing.B) {
	for _, c := range []struct{ spec, zone string }{
		{"30 2 * * *", "America/New_York"},
		{"0 3 1 */3 *", "Asia/Shanghai"},
		{"*/15 * * * *", "Europe/Berlin"},
	} {
		s := mustSchedule(b, c.spec, c.zone)
		b.Run(c.zone+" "+c.spec, func(b *testing.B) {
			at := time.Date(2024, 11, 3, 6, 0, 0, 0, time.UTC)
			for i := 0; i < b.N; i++ {
				at = at.Add(37 * time.Minute)
				if s.Latest(at).IsZero() {
					b.Fatal("no slot")
				}
			}
		})
	}
}
