package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"regexp"
	"strconv"
	"strings"
	template "text/template"
	"time"
	"unicode/utf8"

	// Embedded zone data, so that a minimal host without /usr/share/zoneinfo still
	// resolves every IANA zone a policy names.
	_ "time/tzdata"
)

// Defaults applied when a key is absent (README.md, "The policy file", lists them).
const (
	DefaultListen             = "127.0.0.1:9478"
	DefaultState              = "/var/lib/imagekeeper/lineage.db"
	DefaultConcurrency        = 8
	DefaultRequestsPerSecond  = 10
	DefaultWaitTimeout        = 2 * time.Hour
	DefaultMinKeep            = 1
	DefaultMaxDeletionsPerRun = 50
	// DefaultLineageRetention is how long a deleted image's lineage row stays in
	// the lineage table before the daemon moves it to the archive (lineage_retention).
	DefaultLineageRetention = 90 * day
	// MaxLatenessCap caps the default max_lateness, which is otherwise one period
	// of the schedule: a daily or more frequent policy catches up its latest slot
	// whenever the daemon comes back before the next one, while a weekly or
	// monthly policy does not take an image days late unless told to.
	MaxLatenessCap = 24 * time.Hour
	// maxWaitTimeout bounds wait_timeout: an image still not usable after a week
	// is not going to become one.
	maxWaitTimeout = 7 * day
)

// Nova's tag rules (openstack-facts.md section 2): at most 60 characters, no "/"
// or ",". We also refuse empty tags and surrounding space, which no server has.
const maxTagChars = 60

var policyNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

const maxPolicyNameBytes = 63

// sampleServer is what templates run against at load time, so that a template
// naming a missing field fails validate rather than a 2 a.m. run.
var sampleServer = ServerInfo{
	ID:       "5f3a9c1e-6b2d-4e8f-9a01-23456789abcd",
	Name:     "sample-server-01",
	AZ:       "nova",
	Metadata: map[string]string{},
}

// sampleNow is the fixed instant load-time rendering uses, so that validating a
// file is deterministic.
var sampleNow = time.Date(2025, 1, 15, 12, 0, 0, 0, time.UTC)

func (l *loader) compile(raw *rawConfig) *Config {
	cfg := &Config{
		Cloud:          raw.Cloud,
		State:          DefaultState,
		Listen:         DefaultListen,
		AllowSubMinute: raw.AllowSubMinute,
		Limits:         Limits{Concurrency: DefaultConcurrency, RequestsPerSecond: DefaultRequestsPerSecond},
	}
	if raw.State != nil && !l.bad["state"] {
		if strings.TrimSpace(*raw.State) == "" {
			l.errorf("state", "must be the path of the lineage database, e.g. %s", DefaultState)
		}
		cfg.State = *raw.State
	}
	if raw.Listen != nil && !l.bad["listen"] {
		if err := checkListen(*raw.Listen); err != nil {
			l.errorf("listen", "%v; use HOST:PORT such as %s", err, DefaultListen)
		}
		cfg.Listen = *raw.Listen
	}
	if c := raw.Limits.Concurrency; c != nil && !l.bad["limits.concurrency"] {
		if *c < 1 {
			l.errorf("limits.concurrency", "must be at least 1, got %d", *c)
		}
		cfg.Limits.Concurrency = *c
	}
	cfg.LineageRetention = DefaultLineageRetention
	if raw.LineageRetention != "" {
		if d, ok := l.duration("lineage_retention", raw.LineageRetention, DefaultLineageRetention); ok {
			if d < 0 || (d > 0 && d < day) {
				l.errorf("lineage_retention", "must be 0 (never archive) or at least 1d, got %s", raw.LineageRetention)
			}
			cfg.LineageRetention = d
		}
	}
	if r := raw.Limits.RequestsPerSecond; r != nil && !l.bad["limits.requests_per_second"] {
		if !(*r > 0) || math.IsInf(*r, 0) {
			l.errorf("limits.requests_per_second", "must be a number greater than 0, got %v", *r)
		}
		cfg.Limits.RequestsPerSecond = *r
	}
	defaultLoc := time.UTC
	if tz := raw.Defaults.Timezone; tz != "" && !l.bad["defaults.timezone"] {
		if loc, err := loadLocation(tz); err != nil {
			l.errorf("defaults.timezone", "%v", err)
		} else {
			defaultLoc = loc
		}
	}
	if len(raw.Policies) == 0 && !l.suppressed("policies") {
		l.errorf("policies", "at least one policy is required")
	}
	for i := range raw.Policies {
		path := fmt.Sprintf("policies[%d]", i)
		if p := l.compilePolicy(&raw.Policies[i], path, defaultLoc, raw.AllowSubMinute); p != nil {
			cfg.Policies = append(cfg.Policies, p)
		}
	}
	return cfg
}

func checkListen(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("invalid address %q", addr)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("invalid port %q", port)
	}
	if strings.ContainsAny(host, " /") {
		return fmt.Errorf("invalid host %q", host)
	}
	return nil
}

func checkPolicyName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("is required")
	case len(name) > maxPolicyNameBytes || !policyNameRE.MatchString(name):
		return fmt.Errorf("%q is not a valid policy name; use 1..%d letters, digits, '.', '_' or '-', starting with a letter or digit", truncate(name, 80), maxPolicyNameBytes)
	}
	return nil
}

func loadLocation(name string) (*time.Location, error) {
	const allowed = "must be an IANA time zone name such as UTC, Europe/Berlin or America/New_York"
	if name == "Local" || strings.TrimSpace(name) != name || name == "" {
		return nil, fmt.Errorf("%q: %s", name, allowed)
	}
	loc, err := time.LoadLocation(name)
	if err != nil {
		return nil, fmt.Errorf("unknown time zone %q; %s", truncate(name, 80), allowed)
	}
	return loc, nil
}

// duration parses an optional duration at path; absent or reported keys give def.
func (l *loader) duration(path, s string, def time.Duration) (time.Duration, bool) {
	if s == "" || l.bad[path] {
		return def, false
	}
	d, err := ParseDuration(s)
	if err != nil {
		l.errorf(path, "%v", err)
		return def, false
	}
	return d, true
}

func (l *loader) compilePolicy(rp *rawPolicy, path string, defaultLoc *time.Location, allowSubMinute bool) *Policy {
	p := &Policy{Name: rp.Name, Enabled: true}
	if rp.Enabled != nil {
		p.Enabled = *rp.Enabled
	}
	p.Select = l.compileSelect(&rp.Select, path+".select")
	p.Schedule = l.compileSchedule(&rp.Schedule, path+".schedule", defaultLoc, allowSubMinute)
	p.Image = l.compileImage(&rp.Image, path+".image", p)
	p.Retention = l.compileRetention(&rp.Retention, path+".retention")
	p.Verify = l.compileVerify(&rp.Verify, path+".verify", p.Schedule, defaultLoc, allowSubMinute)
	if p.Schedule == nil || p.Image == nil {
		return nil
	}
	p.Version = policyVersion(p)
	return p
}

func (l *loader) compileSelect(rs *rawSelect, path string) Selector {
	s := Selector{
		Tags:              l.tags(rs.Tags, path+".tags"),
		TagsAny:           l.tags(rs.TagsAny, path+".tags_any"),
		ExcludeTags:       l.tags(rs.ExcludeTags, path+".exclude_tags"),
		AvailabilityZones: rs.AvailabilityZones,
	}
	for i, az := range rs.AvailabilityZones {
		p := fmt.Sprintf("%s.availability_zones[%d]", path, i)
		if !l.bad[p] && strings.TrimSpace(az) == "" {
			l.errorf(p, "must not be empty")
		}
	}
	if len(rs.Tags) == 0 && len(rs.TagsAny) == 0 && !l.bad[path+".tags"] && !l.bad[path+".tags_any"] && !l.suppressed(path) {
		l.errorf(path, "at least one of tags or tags_any is required, so that a policy never images every server by accident")
	}
	excluded := map[string]bool{}
	for _, t := range rs.ExcludeTags {
		excluded[t] = true
	}
	for i, t := range rs.Tags {
		if excluded[t] {
			l.errorf(fmt.Sprintf("%s.tags[%d]", path, i), "tag %q is also in exclude_tags, so the policy can never select a server", t)
		}
	}
	return s
}

// tags checks one tag list against Nova's rules and for duplicates.
func (l *loader) tags(list []string, path string) []string {
	seen := map[string]bool{}
	for i, t := range list {
		p := fmt.Sprintf("%s[%d]", path, i)
		if l.bad[p] {
			continue
		}
		var problem string
		switch {
		case t == "":
			problem = "must not be empty"
		case utf8.RuneCountInString(t) > maxTagChars:
			problem = fmt.Sprintf("tag %q is %d characters; Nova allows at most %d", truncate(t, 80), utf8.RuneCountInString(t), maxTagChars)
		case strings.ContainsAny(t, "/,"):
			problem = fmt.Sprintf("tag %q contains '/' or ',', which Nova does not allow in tags", t)
		case strings.TrimSpace(t) != t:
			problem = fmt.Sprintf("tag %q has leading or trailing space", t)
		case seen[t]:
			problem = fmt.Sprintf("tag %q is listed twice", t)
		}
		if problem != "" {
			l.errorf(p, "%s", problem)
		}
		seen[t] = true
	}
	return list
}

func (l *loader) compileSchedule(rs *rawSchedule, path string, defaultLoc *time.Location, allowSubMinute bool) *Schedule {
	loc := defaultLoc
	if rs.Timezone != "" && !l.bad[path+".timezone"] {
		var err error
		if loc, err = loadLocation(rs.Timezone); err != nil {
			l.errorf(path+".timezone", "%v", err)
			loc = defaultLoc
		}
	}
	catchUp := CatchUpLatest
	if rs.CatchUp != "" && !l.bad[path+".catch_up"] {
		switch c := CatchUp(rs.CatchUp); c {
		case CatchUpLatest, CatchUpNone:
			catchUp = c
		default:
			l.errorf(path+".catch_up", "unknown value %q; allowed values are latest and none", rs.CatchUp)
		}
	}
	lateness, latenessSet := l.duration(path+".max_lateness", rs.MaxLateness, 0)
	if latenessSet && lateness <= 0 {
		l.errorf(path+".max_lateness", "must be positive, got %s (use catch_up: none to never catch up)", rs.MaxLateness)
	}
	spread, spreadSet := l.duration(path+".spread", rs.Spread, 0)
	if spreadSet && spread < 0 {
		l.errorf(path+".spread", "must not be negative, got %s", rs.Spread)
		spreadSet = false
	}
	if l.suppressed(path + ".cron") {
		return nil
	}
	s, err := parseSchedule(rs.Cron, loc, allowSubMinute)
	if err != nil {
		l.errorf(path+".cron", "%v", err)
		return nil
	}
	s.CatchUp = catchUp
	s.MaxLateness = lateness
	if !latenessSet {
		s.MaxLateness = min(s.period, MaxLatenessCap)
	}
	s.Spread = spread
	if spreadSet && spread >= s.period {
		l.errorf(path+".spread", "%s must be shorter than the shortest interval between slots of the schedule (%s)", rs.Spread, formatDuration(s.period))
	}
	return s
}

func (l *loader) compileImage(ri *rawImage, path string, p *Policy) *ImageSpec {
	spec := &ImageSpec{Name: ri.Name, Metadata: map[string]string{}, WaitTimeout: DefaultWaitTimeout, meta: map[string]*template.Template{}}
	ok := true
	if wt, set := l.duration(path+".wait_timeout", ri.WaitTimeout, DefaultWaitTimeout); set {
		if wt <= 0 || wt > maxWaitTimeout {
			l.errorf(path+".wait_timeout", "must be between 1s and %s, got %s", formatDuration(maxWaitTimeout), ri.WaitTimeout)
		}
		spec.WaitTimeout = wt
	}
	data := l.sampleData(p)
	var hooksOK bool
	spec.Hooks, hooksOK = l.compileHooks(&ri.Hooks, path+".hooks", data)
	ok = ok && hooksOK
	if !l.suppressed(path + ".name") {
		if strings.TrimSpace(ri.Name) == "" {
			l.errorf(path+".name", "is required: a template such as '{{ .Server.Name }}-{{ .Slot.Format \"20060102-1504\" }}'")
			ok = false
		} else if t, err := parseTemplate(ri.Name); err != nil {
			l.errorf(path+".name", "invalid template: %v", err)
			ok = false
		} else {
			spec.name = t
			if out, err := execute(t, data); err != nil {
				l.errorf(path+".name", "template fails on a sample server: %v", err)
				ok = false
			} else if err := checkName(out); err != nil {
				l.errorf(path+".name", "on a sample server: %v", err)
				ok = false
			}
		}
	} else {
		ok = false
	}
	for _, k := range sortedKeys(ri.Metadata) {
		kp := mapKeyPath(path+".metadata", k)
		if l.bad[kp] {
			ok = false
			continue
		}
		if err := checkMetadataKey(k); err != nil {
			l.errorAt(l.nodes[kp+"#key"], kp, "invalid key: %v", err)
			ok = false
			continue
		}
		src := ri.Metadata[k]
		spec.Metadata[k] = src
		t, err := parseTemplate(src)
		if err != nil {
			l.errorf(kp, "invalid template: %v", err)
			ok = false
			continue
		}
		spec.meta[k] = t
		out, err := execute(t, data)
		if err != nil {
			l.errorf(kp, "template fails on a sample server: %v", err)
			ok = false
		} else if len(out) > MaxMetadataValueBytes {
			l.errorf(kp, "on a sample server the value is %d bytes; at most %d allowed", len(out), MaxMetadataValueBytes)
			ok = false
		}
	}
	if !ok {
		return nil
	}
	return spec
}

// sampleData is the template data of a load-time render: a sample server carrying
// the policy's tags, and the policy's first slot after a fixed instant.
func (l *loader) sampleData(p *Policy) TemplateData {
	srv := sampleServer
	srv.Tags = append(append([]string(nil), p.Select.Tags...), p.Select.TagsAny...)
	// With a broken schedule the templates are still worth checking.
	slot := sampleNow
	if p.Schedule != nil {
		slot = p.Schedule.Next(sampleNow)
	}
	return TemplateData{
		Server: srv,
		Policy: PolicyInfo{Name: p.Name},
		Slot:   slot,
		Now:    slot.Add(time.Minute),
		RunID:  "sample-run",
	}
}

var retentionKeys = "keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly or keep_within"

func (l *loader) compileRetention(rr *rawRetention, path string) Retention {
	r := Retention{MinKeep: DefaultMinKeep, WhenServerGone: ServerGoneKeep, MaxDeletionsPerRun: DefaultMaxDeletionsPerRun}
	count := func(key string, v *int, min int, what string) int {
		p := path + "." + key
		if v == nil || l.bad[p] {
			return 0
		}
		if *v < min {
			l.errorf(p, "must be %s, got %d", what, *v)
		}
		return *v
	}
	r.KeepLast = count("keep_last", rr.KeepLast, 0, "0 or more")
	r.KeepHourly = count("keep_hourly", rr.KeepHourly, 0, "0 or more")
	r.KeepDaily = count("keep_daily", rr.KeepDaily, 0, "0 or more")
	r.KeepWeekly = count("keep_weekly", rr.KeepWeekly, 0, "0 or more")
	r.KeepMonthly = count("keep_monthly", rr.KeepMonthly, 0, "0 or more")
	r.KeepYearly = count("keep_yearly", rr.KeepYearly, 0, "0 or more")
	if rr.MinKeep != nil && !l.bad[path+".min_keep"] {
		r.MinKeep = count("min_keep", rr.MinKeep, 1, "at least 1 (imagekeeper never deletes a server's last good image)")
	}
	if rr.MaxDeletionsPerRun != nil && !l.bad[path+".max_deletions_per_run"] {
		r.MaxDeletionsPerRun = count("max_deletions_per_run", rr.MaxDeletionsPerRun, 1, "at least 1")
	}
	within, withinSet := l.duration(path+".keep_within", rr.KeepWithin, 0)
	if withinSet && within < 0 {
		l.errorf(path+".keep_within", "must not be negative, got %s", rr.KeepWithin)
		within = 0
	}
	r.KeepWithin = within
	if rr.WhenServerGone != "" && !l.bad[path+".when_server_gone"] {
		switch g := ServerGone(rr.WhenServerGone); g {
		case ServerGoneKeep, ServerGoneApply:
			r.WhenServerGone = g
		default:
			l.errorf(path+".when_server_gone", "unknown value %q; allowed values are keep and apply", rr.WhenServerGone)
		}
	}
	anyBad := l.suppressed(path)
	for _, k := range []string{".keep_last", ".keep_hourly", ".keep_daily", ".keep_weekly", ".keep_monthly", ".keep_yearly", ".keep_within"} {
		anyBad = anyBad || l.bad[path+k]
	}
	if !anyBad && r.KeepLast <= 0 && r.KeepHourly <= 0 && r.KeepDaily <= 0 && r.KeepWeekly <= 0 &&
		r.KeepMonthly <= 0 && r.KeepYearly <= 0 && r.KeepWithin <= 0 {
		l.errorf(path, "no keep rule is set; set at least one of %s to a positive value", retentionKeys)
	}
	return r
}

// policyVersion hashes the effective policy (after defaults), so that a change to
// defaults.timezone changes the version of every policy that inherits it.
func policyVersion(p *Policy) string {
	canon := struct {
		Name        string
		Enabled     bool
		Select      Selector
		Cron        string
		Timezone    string
		CatchUp     CatchUp
		MaxLateness time.Duration
		Spread      time.Duration
		ImageName   string
		Metadata    map[string]string
		WaitTimeout time.Duration
		Retention   Retention
		Hooks       *Hooks `json:",omitempty"`
	}{
		p.Name, p.Enabled, p.Select, p.Schedule.Spec, p.Schedule.Location.String(), p.Schedule.CatchUp,
		p.Schedule.MaxLateness, p.Schedule.Spread, p.Image.Name, p.Image.Metadata, p.Image.WaitTimeout, p.Retention,
		p.Image.Hooks,
	}
	b, err := json.Marshal(canon)
	if err != nil {
		// Only plain values above; Marshal cannot fail on them.
		panic(fmt.Sprintf("policy: marshal canonical policy: %v", err))
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:6])
}
