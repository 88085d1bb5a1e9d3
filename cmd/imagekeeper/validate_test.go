package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestValidateOK(t *testing.T) {
	// Just before the US spring-forward gap: the 02:30 slot runs at 03:00 EDT.
	at := cliOpts{now: func() time.Time { return time.Date(2024, 3, 9, 12, 0, 0, 0, time.UTC) }}
	path := writeFile(t, filepath.Join(t.TempDir(), "ok.yaml"), `policies:
  - name: ny
    select: {tags: [backup]}
    schedule: {cron: "30 2 * * *", timezone: America/New_York}
    image: {name: "{{ .Server.Name }}"}
    retention: {keep_last: 3}
  - name: off
    enabled: false
    select: {tags: [backup]}
    schedule: {cron: "@every 6h"}
    image: {name: "{{ .Server.Name }}"}
    retention: {keep_last: 3}
`)
	code, stdout, stderr := at.cli(t, "validate", "--config", path)
	if code != 0 || stderr != "" {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	want := `ok: 2 policies
ny (30 2 * * * in America/New_York):
  2024-03-10T03:00:00-04:00 EDT Sun
  2024-03-11T02:30:00-04:00 EDT Mon
  2024-03-12T02:30:00-04:00 EDT Tue
off (@every 6h in UTC, disabled):
  2024-03-09T18:00:00Z UTC Sat
  2024-03-10T00:00:00Z UTC Sun
  2024-03-10T06:00:00Z UTC Sun
`
	if stdout != want {
		t.Errorf("stdout:\n%s\nwant:\n%s", stdout, want)
	}
}

func TestValidateExamples(t *testing.T) {
	files, err := filepath.Glob("../../examples/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no examples: %v", err)
	}
	for _, f := range files {
		code, stdout, stderr := cli(t, "validate", "--config", f)
		if code != 0 || !strings.HasPrefix(stdout, "ok: ") {
			t.Errorf("%s: exit %d\nstdout %s\nstderr %s", f, code, stdout, stderr)
		}
	}
}

func TestValidateInvalid(t *testing.T) {
	path := writeFile(t, filepath.Join(t.TempDir(), "bad.yaml"), `limits: {concurrency: 0}
policies:
  - name: web
    select: {tags: [a/b]}
    schedule: {cron: "CRON_TZ=UTC"}
    image: {name: "{{ .Server.Name }}"}
    retention: {keep_last: 3}
`)
	code, stdout, stderr := cli(t, "validate", "--config", path)
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	if stdout != "" {
		t.Errorf("stdout %q, want nothing", stdout)
	}
	want := path + `:1:23: limits.concurrency: must be at least 1, got 0
` + path + `:4:21: policy "web": select.tags[0]: tag "a/b" contains '/' or ',', which Nova does not allow in tags
` + path + `:5:22: policy "web": schedule.cron: "CRON_TZ=UTC": a time zone prefix is not allowed here; set schedule.timezone instead
`
	if stderr != want {
		t.Errorf("stderr:\n%s\nwant:\n%s", stderr, want)
	}
}

func TestValidateJSON(t *testing.T) {
	path := writeFile(t, filepath.Join(t.TempDir(), "bad.yaml"), "policies: []\n")
	code, stdout, _ := cli(t, "validate", "-o", "json", "--config", path)
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	var out validateJSON
	if err := json.Unmarshal([]byte(stdout), &out); err != nil {
		t.Fatalf("decode %q: %v", stdout, err)
	}
	if out.OK || len(out.Errors) != 1 || out.Errors[0].Line != 1 || out.Errors[0].Field != "policies" {
		t.Errorf("json = %+v", out)
	}
}

func TestValidateUnreadable(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope.yaml")
	code, _, stderr := cli(t, "validate", "--config", missing)
	if code != 2 || !strings.Contains(stderr, "no such file") {
		t.Fatalf("exit %d stderr %q, want 2 and the os error", code, stderr)
	}
	code, _, _ = cli(t, "validate", "extra-arg")
	if code != 2 {
		t.Fatalf("positional argument: exit %d, want 2", code)
	}
	code, _, _ = cli(t, "validate", "--no-such-flag")
	if code != 2 {
		t.Fatalf("unknown flag: exit %d, want 2", code)
	}
}
