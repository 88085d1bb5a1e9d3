package policy

import (
	"regexp"
	"strings"
	"time"
)

// Verify is a policy's restore drill: on its own schedule it boots the newest good
// image of Sample servers in turn, waits for ACTIVE (and ConsoleMarker), and
// deletes what it booted.
type Verify struct {
	// Schedule is the drill's own schedule; the backup schedule when cron is
	// "inherit" or absent.
	Schedule *Schedule
	// Inherited says the schedule is the backup schedule's.
	Inherited bool
	// Sample is how many servers each drill boots, rotating through the servers.
	Sample int
	// Flavor is the flavor id or name of drill servers.
	Flavor string
	// Network is a network UUID, "none" or "auto".
	Network string
	// Timeout bounds the wait for ACTIVE (and the console marker).
	Timeout time.Duration
	// ConsoleMarker, when set, must appear in the console log (os-getConsoleOutput).
	ConsoleMarker string
}

// Verify defaults and bounds.
const (
	DefaultVerifyTimeout = 30 * time.Minute
	DefaultVerifySample  = 1
	maxVerifyTimeout     = 24 * time.Hour
	maxVerifySample      = 100
	maxConsoleMarker     = 256
)

// networkUUIDRE is the UUID form Nova takes for a network.
var networkUUIDRE = regexp.MustCompile(`^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$`)

// compileVerify checks a policy's verify block; nil when the policy has none.
func (l *loader) compileVerify(rv *rawVerify, path string, backup *Schedule, defaultLoc *time.Location, allowSubMinute bool) *Verify {
	if l.nodes[path] == nil || l.bad[path] {
		return nil
	}
	v := &Verify{Sample: DefaultVerifySample, Flavor: rv.Flavor, Network: rv.Network, Timeout: DefaultVerifyTimeout,
		ConsoleMarker: rv.ConsoleMarker}
	ok := true
	if rv.Sample != nil && !l.bad[path+".sample"] {
		if *rv.Sample < 1 || *rv.Sample > maxVerifySample {
			l.errorf(path+".sample", "must be between 1 and %d servers per drill, got %d", maxVerifySample, *rv.Sample)
			ok = false
		}
		v.Sample = *rv.Sample
	}
	if !l.bad[path+".flavor"] && strings.TrimSpace(rv.Flavor) == "" {
		l.errorf(path, "flavor is required: the flavor id or name drill servers boot with, e.g. m1.small")
		ok = false
	}
	switch {
	case l.bad[path+".network"]:
	case rv.Network == "":
		v.Network = "none"
	case rv.Network == "none" || rv.Network == "auto" || networkUUIDRE.MatchString(rv.Network):
	default:
		l.errorf(path+".network", "%q: use none, auto or a network UUID (Nova takes no network names)", truncate(rv.Network, 80))
		ok = false
	}
	if t, set := l.duration(path+".timeout", rv.Timeout, DefaultVerifyTimeout); set {
		if t <= 0 || t > maxVerifyTimeout {
			l.errorf(path+".timeout", "must be between 1s and %s, got %s", formatDuration(maxVerifyTimeout), rv.Timeout)
			ok = false
		}
		v.Timeout = t
	}
	if rv.ConsoleMarker != "" && !l.bad[path+".console_marker"] && (len(rv.ConsoleMarker) > maxConsoleMarker || strings.TrimSpace(rv.ConsoleMarker) == "") {
		l.errorf(path+".console_marker", "must be 1 to %d bytes of visible text", maxConsoleMarker)
		ok = false
	}
	loc := defaultLoc
	if rv.Timezone != "" && !l.bad[path+".timezone"] {
		var err error
		if loc, err = loadLocation(rv.Timezone); err != nil {
			l.errorf(path+".timezone", "%v", err)
			ok = false
		}
	}
	switch {
	case l.bad[path+".cron"]:
		ok = false
	case rv.Cron == "" || rv.Cron == "inherit":
		if rv.Timezone != "" {
			l.errorf(path+".timezone", "only goes with a cron of the drill's own; an inherited schedule keeps the backup schedule's time zone")
			ok = false
		}
		v.Schedule, v.Inherited = backup, true
	default:
		s, err := parseSchedule(rv.Cron, loc, allowSubMinute)
		if err != nil {
			l.errorf(path+".cron", "%v", err)
			ok = false
		} else {
			s.CatchUp = CatchUpNone
			v.Schedule = s
		}
	}
	if !ok || v.Schedule == nil {
		return nil
	}
	return v
}
