package policy_test

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/imagekeeper/imagekeeper/policy"
)

var update = flag.Bool("update", false, "rewrite the retention golden files from the current output")

// goldenCase is one input file in testdata/retention/*.yaml.
type goldenCase struct {
	// Timezone is the policy's zone (IANA name).
	Timezone string `yaml:"timezone"`
	// Now is the moment retention runs, RFC 3339.
	Now       string          `yaml:"now"`
	Retention goldenRetention `yaml:"retention"`
	Images    []goldenImage   `yaml:"images"`
	Series    []goldenSeries  `yaml:"series"`
}

type goldenRetention struct {
	KeepLast    int    `yaml:"keep_last"`
	KeepHourly  int    `yaml:"keep_hourly"`
	KeepDaily   int    `yaml:"keep_daily"`
	KeepWeekly  int    `yaml:"keep_weekly"`
	KeepMonthly int    `yaml:"keep_monthly"`
	KeepYearly  int    `yaml:"keep_yearly"`
	KeepWithin  string `yaml:"keep_within"`
	MinKeep     int    `yaml:"min_keep"`
}

type goldenImage struct {
	ID          string `yaml:"id"`
	Time        string `yaml:"time"`
	Status      string `yaml:"status"` // good | failed | in_progress
	Reason      string `yaml:"reason"`
	RequestedAt string `yaml:"requested_at"`
	FailedAt    string `yaml:"failed_at"`
	WaitTimeout string `yaml:"wait_timeout"`
}

// goldenSeries generates images from From up to and including To, stepping Every:
// "Nd" steps N calendar days in the case's zone (same wall-clock time each day,
// whatever DST does), anything else is a Go duration stepped in absolute time.
type goldenSeries struct {
	Prefix      string `yaml:"prefix"`
	From        string `yaml:"from"`
	To          string `yaml:"to"`
	Every       string `yaml:"every"`
	Status      string `yaml:"status"`
	Reason      string `yaml:"reason"`
	WaitTimeout string `yaml:"wait_timeout"`
}

func parseTime(t *testing.T, field, s string) time.Time {
	t.Helper()
	if s == "" {
		return time.Time{}
	}
	v, err := time.Parse(time.RFC3339, s)
	if err != nil {
		t.Fatalf("%s: %v", field, err)
	}
	return v
}

func parseDur(t *testing.T, field, s string) time.Duration {
	t.Helper()
	if s == "" {
		return 0
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		t.Fatalf("%s: %v", field, err)
	}
	return d
}

func parseStatus(t *testing.T, field, s string) policy.RetentionStatus {
	t.Helper()
	switch s {
	case "good":
		return policy.RetentionGood
	case "failed":
		return policy.RetentionFailed
	case "in_progress":
		return policy.RetentionInProgress
	}
	t.Fatalf("%s: unknown status %q (good, failed or in_progress)", field, s)
	return ""
}

// load reads one case and expands its series.
func (c *goldenCase) load(t *testing.T, path string) (imgs []policy.RetentionImage, r policy.Retention, loc *time.Location, now time.Time) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	loc, err = time.LoadLocation(c.Timezone)
	if err != nil {
		t.Fatalf("%s: timezone: %v", path, err)
	}
	now = parseTime(t, "now", c.Now)
	r = policy.Retention{
		KeepLast: c.Retention.KeepLast, KeepHourly: c.Retention.KeepHourly,
		KeepDaily: c.Retention.KeepDaily, KeepWeekly: c.Retention.KeepWeekly,
		KeepMonthly: c.Retention.KeepMonthly, KeepYearly: c.Retention.KeepYearly,
		KeepWithin: parseDur(t, "keep_within", c.Retention.KeepWithin),
		MinKeep:    c.Retention.MinKeep,
	}
	for i, g := range c.Images {
		f := fmt.Sprintf("images[%d]", i)
		imgs = append(imgs, policy.RetentionImage{
			ID:          g.ID,
			Time:        parseTime(t, f+".time", g.Time),
			Status:      parseStatus(t, f+".status", g.Status),
			FailReason:  g.Reason,
			RequestedAt: parseTime(t, f+".requested_at", g.RequestedAt),
			FailedAt:    parseTime(t, f+".failed_at", g.FailedAt),
			WaitTimeout: parseDur(t, f+".wait_timeout", g.WaitTimeout),
		})
	}
	for i, s := range c.Series {
		f := fmt.Sprintf("series[%d]", i)
		from := parseTime(t, f+".from", s.From).In(loc)
		to := parseTime(t, f+".to", s.To)
		days := 0
		var step time.Duration
		if n, ok := strings.CutSuffix(s.Every, "d"); ok {
			if _, err := fmt.Sscan(n, &days); err != nil || days <= 0 {
				t.Fatalf("%s.every: bad day count %q", f, s.Every)
			}
		} else if step = parseDur(t, f+".every", s.Every); step <= 0 {
			t.Fatalf("%s.every: must be positive", f)
		}
		st := parseStatus(t, f+".status", s.Status)
		wt := parseDur(t, f+".wait_timeout", s.WaitTimeout)
		for k, at := 0, from; !at.After(to); k++ {
			imgs = append(imgs, policy.RetentionImage{
				ID: fmt.Sprintf("%s%03d", s.Prefix, k), Time: at, Status: st,
				FailReason: s.Reason, WaitTimeout: wt,
			})
			if days > 0 {
				at = from.AddDate(0, 0, (k+1)*days)
			} else {
				at = at.Add(step)
			}
		}
	}
	return imgs, r, loc, now
}

// render prints decisions as the golden text: one row per image, newest first, with
// the local time and its offset so that DST cases can be checked by eye.
func render(imgs []policy.RetentionImage, ds []policy.Decision, loc *time.Location) []byte {
	byID := make(map[string]policy.RetentionImage, len(imgs))
	for _, im := range imgs {
		byID[im.ID] = im
	}
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tLOCAL TIME\tWEEKDAY\tSTATUS\tDECISION\tREASONS")
	kept, deleted, keptGood := 0, 0, 0
	for _, d := range ds {
		im := byID[d.ImageID]
		st := string(im.Status)
		if st == "" {
			st = "in_progress"
		}
		verdict := "delete"
		if d.Keep {
			verdict = "keep"
			kept++
			if im.Status == policy.RetentionGood {
				keptGood++
			}
		} else {
			deleted++
		}
		lt := im.Time.In(loc)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", d.ImageID, lt.Format("2006-01-02 15:04 -07:00"),
			lt.Format("Mon"), st, verdict, strings.Join(d.Reasons, "; "))
	}
	tw.Flush()
	fmt.Fprintf(&buf, "kept %d (good %d), deleted %d\n", kept, keptGood, deleted)
	return buf.Bytes()
}

// TestRetainGolden runs every testdata/retention/*.yaml case and compares the
// decisions with the .golden file beside it. Run with -update to rewrite them, and
// then read the diff: a golden file is only as good as the review it got.
func TestRetainGolden(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "retention", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 10 {
		t.Fatalf("found %d golden cases, expected at least 10", len(files))
	}
	for _, file := range files {
		name := strings.TrimSuffix(filepath.Base(file), ".yaml")
		t.Run(name, func(t *testing.T) {
			var c goldenCase
			imgs, r, loc, now := c.load(t, file)
			got := render(imgs, policy.Retain(imgs, r, loc, now), loc)
			golden := strings.TrimSuffix(file, ".yaml") + ".golden"
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./policy -run TestRetainGolden -update)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("decisions differ from %s\n--- got\n%s--- want\n%s", golden, got, want)
			}
		})
	}
}

func TestRetainEmpty(t *testing.T) {
	if got := policy.Retain(nil, policy.Retention{KeepLast: 1, MinKeep: 1}, nil, time.Now()); len(got) != 0 {
		t.Fatalf("Retain(nil) = %v, want no decisions", got)
	}
}

// TestRetainReasonsAreIsolated checks that the shared backing array of Reasons cannot
// leak: appending to one decision's reasons must not change the next one's.
func TestRetainReasonsAreIsolated(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	imgs := []policy.RetentionImage{
		{ID: "a", Time: now.Add(-time.Hour), Status: policy.RetentionGood},
		{ID: "b", Time: now.Add(-2 * time.Hour), Status: policy.RetentionGood},
	}
	ds := policy.Retain(imgs, policy.Retention{KeepLast: 2, MinKeep: 1}, time.UTC, now)
	_ = append(ds[0].Reasons, "clobber")
	if got := strings.Join(ds[1].Reasons, ";"); got != "keep_last 2/2" {
		t.Fatalf("second decision's reasons = %q after appending to the first", got)
	}
}

func TestFailedDeadline(t *testing.T) {
	slot := time.Date(2026, 11, 24, 2, 30, 0, 0, time.UTC)
	for _, tc := range []struct {
		name string
		img  policy.RetentionImage
		want time.Time
	}{
		{"slot plus wait plus grace", policy.RetentionImage{Time: slot, WaitTimeout: 2 * time.Hour},
			slot.Add(3 * time.Hour)},
		{"late request counts from the request", policy.RetentionImage{Time: slot,
			RequestedAt: slot.Add(10 * time.Minute), WaitTimeout: 2 * time.Hour}, slot.Add(3*time.Hour + 10*time.Minute)},
		{"declared failed late counts from then", policy.RetentionImage{Time: slot, WaitTimeout: time.Hour,
			FailedAt: slot.Add(5 * time.Hour)}, slot.Add(6 * time.Hour)},
		{"early failure still waits out the timeout", policy.RetentionImage{Time: slot, WaitTimeout: 2 * time.Hour,
			FailedAt: slot.Add(time.Minute)}, slot.Add(3 * time.Hour)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.img.FailedDeadline(); !got.Equal(tc.want) {
				t.Fatalf("FailedDeadline() = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestFormatRetentionDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		48 * time.Hour:   "48h",
		time.Hour:        "1h",
		90 * time.Minute: "1h30m0s",
		0:                "0s",
	} {
		if got := policy.FormatRetentionDuration(d); got != want {
			t.Errorf("FormatRetentionDuration(%v) = %q, want %q", d, got, want)
		}
	}
}
