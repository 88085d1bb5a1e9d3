package policy

import (
	"errors"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func mustLoad(t *testing.T, path string) *Config {
	t.Helper()
	cfg, err := Load(path)
	if err != nil {
		t.Fatalf("load %s: %v", path, err)
	}
	return cfg
}

func TestGoodFull(t *testing.T) {
	cfg := mustLoad(t, "testdata/full.good.yaml")
	if cfg.Cloud != "prod" || cfg.State != "/srv/imagekeeper/lineage.db" || cfg.Listen != "127.0.0.1:9555" {
		t.Errorf("top level = %q %q %q", cfg.Cloud, cfg.State, cfg.Listen)
	}
	if cfg.Limits != (Limits{Concurrency: 4, RequestsPerSecond: 2.5}) {
		t.Errorf("limits = %+v", cfg.Limits)
	}
	if len(cfg.Policies) != 1 {
		t.Fatalf("%d policies", len(cfg.Policies))
	}
	p := cfg.Policies[0]
	if p.Name != "web-daily" || p.Enabled {
		t.Errorf("name %q enabled %v", p.Name, p.Enabled)
	}
	wantSel := Selector{
		Tags: []string{"backup=daily", "env=prod"}, TagsAny: []string{"web", "api"},
		ExcludeTags: []string{"no-backup"}, AvailabilityZones: []string{"az1", "az2"},
	}
	if !reflect.DeepEqual(p.Select, wantSel) {
		t.Errorf("select = %+v", p.Select)
	}
	s := p.Schedule
	if s.Spec != "30 2 * * *" || s.Location.String() != "Europe/Berlin" || s.Every != 0 ||
		s.CatchUp != CatchUpNone || s.MaxLateness != 6*time.Hour || s.Spread != 20*time.Minute {
		t.Errorf("schedule = %+v", s)
	}
	if p.Image.WaitTimeout != 3*time.Hour || len(p.Image.Metadata) != 3 || p.Image.Metadata["ImageType"] != "Gold" {
		t.Errorf("image = %+v", p.Image)
	}
	want := Retention{KeepLast: 3, KeepHourly: 24, KeepDaily: 7, KeepWeekly: 4, KeepMonthly: 12, KeepYearly: 2,
		KeepWithin: 48 * time.Hour, MinKeep: 2, WhenServerGone: ServerGoneApply, MaxDeletionsPerRun: 10}
	if p.Retention != want {
		t.Errorf("retention = %+v\nwant %+v", p.Retention, want)
	}
	if len(cfg.Version) != 12 || len(p.Version) != 12 {
		t.Errorf("versions %q %q, want 12 hex digits", cfg.Version, p.Version)
	}
	// The template's helpers and the slot in the policy's zone, end to end.
	slot := time.Date(2024, 3, 31, 3, 0, 0, 0, s.Location)
	name, meta, err := p.Image.Render(TemplateData{
		Server: ServerInfo{ID: "id-1", Name: "Web 01 (Prod)", Metadata: map[string]string{}},
		Policy: PolicyInfo{Name: p.Name}, Slot: slot, Now: slot,
	})
	if err != nil {
		t.Fatal(err)
	}
	if name != "web-01-prod-20240331-0300" {
		t.Errorf("name = %q", name)
	}
	wantMeta := map[string]string{"ImageType": "Gold", "source": "id-1", "app name": "none"}
	if !reflect.DeepEqual(meta, wantMeta) {
		t.Errorf("metadata = %v, want %v", meta, wantMeta)
	}
}

func TestGoodDefaults(t *testing.T) {
	cfg := mustLoad(t, "testdata/defaults.good.yaml")
	if cfg.Cloud != "" || cfg.State != DefaultState || cfg.Listen != DefaultListen || cfg.AllowSubMinute {
		t.Errorf("top level = %+v", cfg)
	}
	if cfg.Limits != (Limits{Concurrency: 8, RequestsPerSecond: 10}) {
		t.Errorf("limits = %+v", cfg.Limits)
	}
	p := cfg.Policies[0]
	s := p.Schedule
	if !p.Enabled || s.Location != time.UTC || s.CatchUp != CatchUpLatest || s.Spread != 0 {
		t.Errorf("policy = %+v schedule = %+v", p, s)
	}
	if s.MaxLateness != 24*time.Hour {
		t.Errorf("max_lateness = %v, want one period (24h) for a daily schedule", s.MaxLateness)
	}
	if p.Image.WaitTimeout != 2*time.Hour {
		t.Errorf("wait_timeout = %v", p.Image.WaitTimeout)
	}
	want := Retention{KeepDaily: 7, MinKeep: 1, WhenServerGone: ServerGoneKeep, MaxDeletionsPerRun: 50}
	if p.Retention != want {
		t.Errorf("retention = %+v", p.Retention)
	}
}

func TestGoodAnchors(t *testing.T) {
	cfg := mustLoad(t, "testdata/anchors.good.yaml")
	a, b := cfg.Policies[0], cfg.Policies[1]
	if a.Retention.KeepDaily != 7 || a.Retention.KeepWeekly != 4 {
		t.Errorf("a retention = %+v", a.Retention)
	}
	if b.Retention.KeepDaily != 14 || b.Retention.KeepWeekly != 4 {
		t.Errorf("b retention = %+v: explicit keys must win over merged ones", b.Retention)
	}
	if a.Schedule.Location.String() != "America/New_York" {
		t.Errorf("a zone = %v, want defaults.timezone", a.Schedule.Location)
	}
	if a.Location() != a.Schedule.Location {
		t.Errorf("a.Location() = %v, want its schedule's %v", a.Location(), a.Schedule.Location)
	}
	if b.Schedule.Every != 6*time.Hour || b.Schedule.MaxLateness != 6*time.Hour || b.Schedule.Spread != time.Hour {
		t.Errorf("b schedule = %+v", b.Schedule)
	}
	if a.Version == b.Version {
		t.Errorf("different policies share version %s", a.Version)
	}
}

func TestGoodSubMinute(t *testing.T) {
	cfg := mustLoad(t, "testdata/subminute.good.yaml")
	s := cfg.Policies[0].Schedule
	if !cfg.AllowSubMinute || s.Every != 15*time.Second || s.MaxLateness != 15*time.Second {
		t.Errorf("config %v schedule %+v", cfg.AllowSubMinute, s)
	}
}

// TestVersions: the file version follows the bytes, the policy version follows
// the effective policy, so that a reload can tell which policies changed.
func TestVersions(t *testing.T) {
	base := "policies:\n  - name: a\n    select: {tags: [x]}\n    schedule: {cron: '@daily'}\n    image: {name: n}\n    retention: {keep_last: 1}\n"
	load := func(src string) *Config {
		t.Helper()
		cfg, err := Parse("v.yaml", []byte(src))
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	c1, c2 := load(base), load("# comment\n"+base)
	if c1.Version == c2.Version {
		t.Error("file version did not change with the bytes")
	}
	if c1.Policies[0].Version != c2.Policies[0].Version {
		t.Error("policy version changed with a comment")
	}
	c3 := load("defaults: {timezone: Europe/Paris}\n" + base)
	if c3.Policies[0].Version == c1.Policies[0].Version {
		t.Error("policy version did not change with the inherited time zone")
	}
}

func TestExamplesLoad(t *testing.T) {
	files, err := filepath.Glob("../examples/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"daily.yaml", "gfs.yaml", "multi.yaml"} {
		found := false
		for _, f := range files {
			found = found || filepath.Base(f) == want
		}
		if !found {
			t.Errorf("examples/%s is missing", want)
		}
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			cfg := mustLoad(t, f)
			if len(cfg.Policies) == 0 {
				t.Fatal("no policies")
			}
			for _, p := range cfg.Policies {
				if p.Schedule.Next(time.Now()).IsZero() {
					t.Errorf("policy %s never fires", p.Name)
				}
			}
		})
	}
}

func TestRender(t *testing.T) {
	cfg, err := Parse("r.yaml", []byte(`policies:
  - name: r
    select: {tags: [x]}
    schedule: {cron: "@daily", timezone: Asia/Tokyo}
    image:
      name: '{{ .Server.Name | trunc 9 }}{{ .Server.Metadata.suffix }}'
      metadata: {run: '{{ .RunID }}', server_tags: '{{ join "," .Server.Tags | upper }}', az: '{{ .Server.AZ | replace "-" "_" }}'}
    retention: {keep_last: 1}
`))
	if err != nil {
		t.Fatal(err)
	}
	spec := cfg.Policies[0].Image
	data := TemplateData{Server: ServerInfo{Name: "héllo-wörld", AZ: "eu-1", Tags: []string{"a", "b"}, Metadata: map[string]string{}}, RunID: "r1"}
	// "héllo-wö" is 9 bytes up to the middle of ö: trunc must not split it.
	name, meta, err := spec.Render(data)
	if err != nil {
		t.Fatal(err)
	}
	if name != "héllo-w" {
		t.Errorf("name = %q", name)
	}
	if meta["run"] != "r1" || meta["server_tags"] != "A,B" || meta["az"] != "eu_1" {
		t.Errorf("metadata = %v", meta)
	}
	for _, c := range []struct {
		suffix, want string
	}{
		{" ", "leading or trailing white space"},
		{strings.Repeat("x", 240), "at most 242 allowed"},
	} {
		data.Server.Metadata = map[string]string{"suffix": c.suffix}
		_, _, err := spec.Render(data)
		if !errors.Is(err, ErrTemplate) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("suffix %q: err = %v, want ErrTemplate mentioning %q", c.suffix, err, c.want)
		}
	}
	data.Server.Name = ""
	data.Server.Metadata = nil
	if _, _, err := spec.Render(data); !errors.Is(err, ErrTemplate) || !strings.Contains(err.Error(), "empty") {
		t.Errorf("empty name: err = %v", err)
	}
}

func TestSlugAndTruncate(t *testing.T) {
	for in, want := range map[string]string{"Web 01 (Prod)": "web-01-prod", "--a--b--": "a-b", "ÄÖ": "", "x.y_z": "x-y-z"} {
		if got := slug(in); got != want {
			t.Errorf("slug(%q) = %q, want %q", in, got, want)
		}
	}
	for _, c := range []struct {
		s    string
		n    int
		want string
	}{{"abc", 5, "abc"}, {"abc", 2, "ab"}, {"日本", 4, "日"}, {"日本", 3, "日"}, {"日本", 2, ""}} {
		if got := truncate(c.s, c.n); got != c.want {
			t.Errorf("truncate(%q, %d) = %q, want %q", c.s, c.n, got, c.want)
		}
	}
}

func TestParseDuration(t *testing.T) {
	good := map[string]time.Duration{
		"0": 0, "90s": 90 * time.Second, "36h": 36 * time.Hour, "7d": 7 * 24 * time.Hour, "2w": 14 * 24 * time.Hour,
		"1d12h": 36 * time.Hour, "1.5d": 36 * time.Hour, "-2d": -48 * time.Hour, "1h30m": 90 * time.Minute,
	}
	for in, want := range good {
		got, err := ParseDuration(in)
		if err != nil || got != want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "7", "d", "7x", "1.5.d", "-", "7dd", "99999999999w", "1e3h"} {
		if d, err := ParseDuration(in); err == nil {
			t.Errorf("ParseDuration(%q) = %v, want an error", in, d)
		}
	}
}

// TestSchemaMatchesStructs keeps the walk's schema and the yaml tags of the raw
// structs in step: a key added to one but not the other would either be refused
// by the walk or silently dropped by the decoder.
func TestSchemaMatchesStructs(t *testing.T) {
	var check func(s *schema, typ reflect.Type, path string)
	check = func(s *schema, typ reflect.Type, path string) {
		if typ.Kind() == reflect.Slice {
			typ = typ.Elem()
			s = s.elem
		}
		tags := map[string]reflect.Type{}
		for i := 0; i < typ.NumField(); i++ {
			tag := strings.Split(typ.Field(i).Tag.Get("yaml"), ",")[0]
			if tag != "" {
				tags[tag] = typ.Field(i).Type
			}
		}
		if len(tags) != len(s.fields) {
			t.Errorf("%s: struct has %d keys, schema %d", path, len(tags), len(s.fields))
		}
		for _, f := range s.fields {
			ft, ok := tags[f.key]
			if !ok {
				t.Errorf("%s: schema key %q not in %v", path, f.key, typ)
				continue
			}
			if f.kind == kMapping || f.kind == kMappingList {
				check(&f.schema, ft, path+"."+f.key)
			}
		}
	}
	check(&configSchema, reflect.TypeOf(rawConfig{}), "")
}

// TestLiterals: values built by hand (as other packages' tests do) behave like
// loaded ones instead of panicking.
func TestLiterals(t *testing.T) {
	s := &Schedule{Spec: "30 2 * * *", Location: mustLoc(t, "America/New_York")}
	got := s.Next(time.Date(2024, 3, 9, 12, 0, 0, 0, time.UTC))
	if want := time.Date(2024, 3, 10, 7, 0, 0, 0, time.UTC); !got.Equal(want) {
		t.Errorf("literal Next = %s, want %s", got, want)
	}
	if l := s.Latest(got); !l.Equal(got) {
		t.Errorf("literal Latest = %s", l)
	}
	if n := (&Schedule{Spec: "not cron"}).Next(time.Now()); !n.IsZero() {
		t.Errorf("invalid literal Next = %s, want zero", n)
	}
	spec := &ImageSpec{Name: "{{ .Server.Name }}-x", Metadata: map[string]string{"k": "{{ .RunID }}"}}
	name, meta, err := spec.Render(TemplateData{Server: ServerInfo{Name: "s"}, RunID: "r"})
	if err != nil || name != "s-x" || meta["k"] != "r" {
		t.Errorf("literal Render = %q %v %v", name, meta, err)
	}
}
