package policy

import (
	"fmt"
	"math/bits"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
)

// Schedule is a compiled policy schedule. Its slots are DST-correct in Location:
// every wall-clock slot fires exactly once; a slot whose wall time does not exist
// (the spring-forward gap) fires at the first instant after the gap; a wall time
// that happens twice (the fall-back overlap) fires once, at its first occurrence.
// Gap slots that land on the same instant (02:00, 02:30 and 03:00 all map to 03:00
// on a spring-forward day) are one slot, because a slot is identified by its
// instant. @every schedules ignore wall clocks: their slots are the multiples of
// the interval since the Unix epoch, so they are stable across restarts.
//
// Schedule implements cron.Schedule. It is immutable and safe for concurrent use.
type Schedule struct {
	// Spec is the cron expression as written in the policy.
	Spec string
	// Location is the policy's time zone; slots are returned in it.
	Location *time.Location
	// Every is the interval of an @every schedule, 0 for cron expressions.
	Every time.Duration
	// CatchUp says whether a slot missed while the daemon was down runs on start.
	CatchUp CatchUp
	// MaxLateness is how late a missed slot may still be caught up.
	MaxLateness time.Duration
	// Spread is the window over which a slot's servers start, at stable offsets.
	Spread time.Duration

	// wall holds the cron fields as robfig bitmasks evaluated in UTC, which we use
	// as a DST-free civil calendar: a time.Time in UTC whose fields are the wall
	// clock of Location.
	wall *cron.SpecSchedule
	// period is the shortest interval between two slots (wall clock for cron).
	period time.Duration
}

var _ cron.Schedule = (*Schedule)(nil)

// cronParser accepts exactly what the policy language documents: five fields or
// a descriptor. @every is handled by us, not robfig, so that it accepts d and w.
var cronParser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// cronForms is the "what is allowed" part of cron error messages.
const cronForms = `use 5 fields (minute hour day-of-month month day-of-week, e.g. "30 2 * * *"), ` +
	`@hourly, @daily, @weekly, @monthly, @yearly or "@every DURATION"`

// maxEvery bounds @every so that slot arithmetic stays far from overflow and a
// typo like "@every 100000h" is caught.
const maxEvery = 366 * day

// minEvery is the shortest @every without allow_sub_minute.
const minEvery = time.Minute

// parseSchedule compiles a cron spec in loc. It never panics, even on input that
// makes robfig panic.
func parseSchedule(spec string, loc *time.Location, allowSubMinute bool) (s *Schedule, err error) {
	spec = strings.TrimSpace(spec)
	if spec == "" {
		return nil, fmt.Errorf("is required; %s", cronForms)
	}
	if strings.HasPrefix(spec, "CRON_TZ=") || strings.HasPrefix(spec, "TZ=") {
		return nil, fmt.Errorf("%q: a time zone prefix is not allowed here; set schedule.timezone instead", spec)
	}
	s = &Schedule{Spec: spec, Location: loc}
	if rest, ok := strings.CutPrefix(spec, "@every"); ok && (rest == "" || rest[0] == ' ' || rest[0] == '\t') {
		rest = strings.TrimSpace(rest)
		d, err := ParseDuration(rest)
		if err != nil {
			return nil, fmt.Errorf("%q: %v", spec, err)
		}
		switch {
		case d <= 0:
			return nil, fmt.Errorf("%q: the interval must be positive", spec)
		case d%time.Second != 0:
			return nil, fmt.Errorf("%q: the interval must be a whole number of seconds", spec)
		case d < minEvery && !allowSubMinute:
			return nil, fmt.Errorf("%q: the interval must be at least 1m (set allow_sub_minute: true at the top level for demos and tests)", spec)
		case d > maxEvery:
			return nil, fmt.Errorf("%q: the interval must be at most %s; use a cron expression for rarer schedules", spec, formatDuration(maxEvery))
		}
		s.Every = d
		s.period = d
		return s, nil
	}
	defer func() {
		// robfig/cron v3.0.1 panics on some malformed input (CRON_TZ=UTC alone);
		// the prefix check above covers the known case, this covers the unknown.
		if r := recover(); r != nil {
			s, err = nil, fmt.Errorf("%q: invalid cron expression; %s", spec, cronForms)
		}
	}()
	parsed, err := cronParser.Parse(spec)
	if err != nil {
		return nil, fmt.Errorf("%q: %v; %s", spec, err, cronForms)
	}
	ss, ok := parsed.(*cron.SpecSchedule)
	if !ok {
		return nil, fmt.Errorf("%q: invalid cron expression; %s", spec, cronForms)
	}
	wall := *ss
	wall.Location = time.UTC
	s.wall = &wall
	ref := time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	first := s.nextWall(ref)
	if first.IsZero() {
		return nil, fmt.Errorf("%q never fires: no date matches the day-of-month and month fields", spec)
	}
	s.period = s.minGap(first)
	return s, nil
}

// minGap is the shortest wall-clock interval between consecutive slots among the
// first few after first; it is what "one period" means for defaults and checks.
func (s *Schedule) minGap(first time.Time) time.Duration {
	gap := time.Duration(0)
	prev := first
	for i := 0; i < 64; i++ {
		next := s.nextWall(prev)
		if next.IsZero() {
			break
		}
		if d := next.Sub(prev); gap == 0 || d < gap {
			gap = d
		}
		prev = next
	}
	if gap == 0 {
		// A spec that fires once in twenty years; treat it as yearly.
		gap = 365 * day
	}
	return gap
}

// Period returns the shortest interval between two consecutive slots, measured on
// the wall clock for cron expressions. It is the default max_lateness (capped at
// one day) and the bound for spread.
func (s *Schedule) Period() time.Duration { return s.period }

// Next returns the first slot strictly after after, in the schedule's Location, or
// the zero time if the schedule never fires again.
func (s *Schedule) Next(after time.Time) time.Time {
	if s.Every > 0 {
		step := max(int64(s.Every/time.Second), 1)
		k := floorDiv(after.Unix(), step) + 1
		return time.Unix(k*step, 0).In(s.loc())
	}
	if s.wall == nil {
		if c := s.compiled(); c != nil {
			return c.Next(after)
		}
		return time.Time{}
	}
	w := s.wallOf(after)
	// Wall slots map to instants monotonically, so the first wall slot whose
	// instant is after after is the answer. More than one iteration happens only
	// when after lies in a fall-back overlap, whose wall slots already fired.
	for i := 0; i < 1<<14; i++ {
		w = s.nextWall(w)
		if w.IsZero() {
			return time.Time{}
		}
		if t := s.instant(w); t.After(after) {
			return t
		}
	}
	return time.Time{}
}

// Latest returns the most recent slot at or before at, in the schedule's
// Location, or the zero time if there is none within the last ten years.
func (s *Schedule) Latest(at time.Time) time.Time {
	if s.Every > 0 {
		step := max(int64(s.Every/time.Second), 1)
		return time.Unix(floorDiv(at.Unix(), step)*step, 0).In(s.loc())
	}
	if s.wall == nil {
		if c := s.compiled(); c != nil {
			return c.Latest(at)
		}
		return time.Time{}
	}
	w := s.prevWall(s.wallOf(at))
	if w.IsZero() {
		return time.Time{}
	}
	for i := 0; s.instant(w).After(at); i++ {
		if i > 1<<14 {
			return time.Time{}
		}
		w = s.prevWall(w.Add(-time.Minute))
		if w.IsZero() {
			return time.Time{}
		}
	}
	// In a fall-back overlap, wall slots after at's wall time fired in the first
	// pass, before at.
	for i := 0; i < 1<<14; i++ {
		n := s.nextWall(w)
		if n.IsZero() || s.instant(n).After(at) {
			break
		}
		w = n
	}
	return s.instant(w)
}

func (s *Schedule) loc() *time.Location {
	if s.Location == nil {
		return time.UTC
	}
	return s.Location
}

// compiled serves a Schedule built as a literal rather than by Load (tests in
// other packages do that): it parses Spec on every call, and a spec that does not
// parse never fires.
func (s *Schedule) compiled() *Schedule {
	c, err := parseSchedule(s.Spec, s.loc(), true)
	if err != nil || c.wall == nil {
		return nil
	}
	return c
}

// wallOf returns t's wall clock in Location as a UTC time.
func (s *Schedule) wallOf(t time.Time) time.Time {
	t = t.In(s.Location)
	y, mo, d := t.Date()
	h, mi, sec := t.Clock()
	return time.Date(y, mo, d, h, mi, sec, t.Nanosecond(), time.UTC)
}

// instant maps a wall clock (as UTC) to the first instant in Location whose wall
// clock is at or past it: the wall time itself when it exists once, its first
// occurrence in a fall-back overlap, and the end of the gap when it does not exist.
func (s *Schedule) instant(w time.Time) time.Time {
	l := w.Unix()
	// Offsets are within ±14h, so 26h earlier the wall clock is surely before w.
	t := time.Unix(l-26*3600, 0).In(s.Location)
	for i := 0; i < 32; i++ {
		_, off := t.Zone()
		_, end := t.ZoneBounds()
		x := max(t.Unix(), l-int64(off))
		if end.IsZero() || x < end.Unix() {
			return time.Unix(x, 0).In(s.Location)
		}
		t = end.In(s.Location)
	}
	return time.Date(w.Year(), w.Month(), w.Day(), w.Hour(), w.Minute(), w.Second(), 0, s.Location)
}

// nextWall is the first wall slot strictly after w. robfig searches five years at
// a time; we look a little further so that Feb 29 survives the 2100 non-leap year.
func (s *Schedule) nextWall(w time.Time) time.Time {
	for i := 0; i < 3; i++ {
		if n := s.wall.Next(w); !n.IsZero() {
			return n
		}
		w = time.Date(w.Year()+6, 1, 1, 0, 0, 0, 0, time.UTC).Add(-time.Second)
	}
	return time.Time{}
}

// prevWall is the last wall slot at or before w, searching back ten years.
func (s *Schedule) prevWall(w time.Time) time.Time {
	t := w.Truncate(time.Minute)
	limit := t.Year() - 10
	for t.Year() >= limit {
		y, mo, d := t.Date()
		if s.wall.Month&(1<<uint(mo)) == 0 {
			t = time.Date(y, mo, 1, 0, 0, 0, 0, time.UTC).Add(-time.Minute)
			continue
		}
		if !s.dayMatches(t) {
			t = time.Date(y, mo, d, 0, 0, 0, 0, time.UTC).Add(-time.Minute)
			continue
		}
		h, mi := t.Hour(), t.Minute()
		hours := s.wall.Hour & (uint64(2)<<uint(h) - 1)
		if hours == 0 {
			t = time.Date(y, mo, d, 0, 0, 0, 0, time.UTC).Add(-time.Minute)
			continue
		}
		if hh := bits.Len64(hours) - 1; hh < h {
			h, mi = hh, 59
		}
		minutes := s.wall.Minute & (uint64(2)<<uint(mi) - 1)
		if minutes == 0 {
			t = time.Date(y, mo, d, h, 0, 0, 0, time.UTC).Add(-time.Minute)
			continue
		}
		return time.Date(y, mo, d, h, bits.Len64(minutes)-1, 0, 0, time.UTC)
	}
	return time.Time{}
}

// dayMatches mirrors robfig's rule: when either day field is "*", both must
// match; when both are restricted, either may (as in Vixie cron).
func (s *Schedule) dayMatches(t time.Time) bool {
	const starBit = 1 << 63
	dom := s.wall.Dom&(1<<uint(t.Day())) != 0
	dow := s.wall.Dow&(1<<uint(t.Weekday())) != 0
	if s.wall.Dom&starBit != 0 || s.wall.Dow&starBit != 0 {
		return dom && dow
	}
	return dom || dow
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}
