// Package policy owns the policy language: the YAML schema, strict loading with
// FILE:LINE:COL errors, validation, and the compiled, immutable values the rest of
// imagekeeper works from (schedules, templates, retention rules). It also holds the
// pure retention function.
package policy

import (
	"time"
)

// Config is a loaded and compiled policy file. It is immutable once returned by Load:
// the daemon swaps whole Configs on reload, and in-flight runs keep the one they
// started with.
type Config struct {
	// Path is the file the config was loaded from.
	Path string
	// Version identifies the file's content (a short hash); lineage rows record it.
	Version string
	// Cloud names the clouds.yaml entry; empty means OS_CLOUD decides.
	Cloud string
	// State is the SQLite lineage database path.
	State string
	// Listen is the address of /metrics, /healthz and /readyz.
	Listen string
	// Limits bound the load on the cloud across all policies.
	Limits Limits
	// AllowSubMinute permits @every schedules under one minute (demo and tests).
	AllowSubMinute bool
	// LineageRetention is how long a deleted image's lineage row stays in the
	// lineage table before the daemon moves it to the archive (`why` still
	// answers for it); 0 keeps every row in the table.
	LineageRetention time.Duration
	// Policies in file order.
	Policies []*Policy
}

// Policy returns the config's policy called name, enabled or not; nil when there
// is none (or c is nil: a command read with --state alone has no config). Names
// are unique in a loaded file, so the first match is the only one. What acts on a
// policy's images asks Coordinator.Policy instead, which also requires it enabled.
func (c *Config) Policy(name string) *Policy {
	if c == nil {
		return nil
	}
	for _, p := range c.Policies {
		if p != nil && p.Name == name {
			return p
		}
	}
	return nil
}

// Limits bound the daemon's load on the cloud.
type Limits struct {
	// Concurrency is the most createImage/wait/delete workers at once.
	Concurrency int
	// RequestsPerSecond caps calls to the cloud across all policies.
	RequestsPerSecond float64
}

// Policy is one compiled policy.
type Policy struct {
	Name      string
	Enabled   bool
	Select    Selector
	Schedule  *Schedule
	Image     *ImageSpec
	Retention Retention
	// Verify is the policy's restore drill; nil when it has no verify block.
	Verify *Verify
	// Version identifies this policy's own content (a short hash); a change of it
	// means the policy changed on reload.
	Version string
}

// Location is the time zone the policy's slots, templates and calendar retention
// rules count in: its schedule's, UTC when there is none (a Policy built by hand in
// a test). Load always sets one.
func (p *Policy) Location() *time.Location {
	if p.Schedule == nil {
		return time.UTC
	}
	return p.Schedule.loc()
}

// Selector picks servers by Nova tags and availability zone.
type Selector struct {
	Tags              []string
	TagsAny           []string
	ExcludeTags       []string
	AvailabilityZones []string
}

// CatchUp says what happens to slots missed while the daemon was down.
type CatchUp string

// CatchUp values.
const (
	CatchUpLatest CatchUp = "latest"
	CatchUpNone   CatchUp = "none"
)

// ServerGone says what retention does with images of a server that no longer exists
// or no longer matches the policy.
type ServerGone string

// ServerGone values.
const (
	ServerGoneKeep  ServerGone = "keep"
	ServerGoneApply ServerGone = "apply"
)

// Retention holds the keep rules of a policy. Rules are OR-ed: a good image is kept if
// any rule keeps it.
type Retention struct {
	KeepLast    int
	KeepHourly  int
	KeepDaily   int
	KeepWeekly  int
	KeepMonthly int
	KeepYearly  int
	// KeepWithin keeps every good image within this duration of the newest good image.
	KeepWithin time.Duration
	// MinKeep is the floor of good images per server; at least 1.
	MinKeep            int
	WhenServerGone     ServerGone
	MaxDeletionsPerRun int
}

// ServerInfo is the server a template renders for (template data .Server).
type ServerInfo struct {
	ID       string
	Name     string
	AZ       string
	Tags     []string
	Metadata map[string]string
}

// PolicyInfo is the policy a template renders for (template data .Policy).
type PolicyInfo struct {
	Name string
}

// TemplateData is what image name and metadata templates see.
type TemplateData struct {
	Server ServerInfo
	Policy PolicyInfo
	// Slot is the scheduled instant in the policy's time zone, not the moment of the call.
	Slot time.Time
	// Now is the moment of rendering, in the policy's time zone.
	Now   time.Time
	RunID string
}
