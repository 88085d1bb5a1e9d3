package policy_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/imagekeeper/imagekeeper/policy"
)

// renderConfig uses every documented helper on every field of the server that a
// hostile or careless owner controls (name, tags, metadata), the way real policies
// do.
const renderConfig = `
state: /tmp/x.db
policies:
  - name: hostile
    select: {tags: [backup]}
    schedule: {cron: "30 2 * * *", timezone: Asia/Shanghai}
    image:
      name: '{{ .Server.Name }}-{{ .Slot.Format "20060102-1504" }}'
      metadata:
        source: '{{ .Server.ID }}'
        az: '{{ .Server.AZ | default "none" }}'
        server_owner: '{{ index .Server.Metadata "owner" | trunc 200 }}'
        server_tags: '{{ join "," .Server.Tags | trunc 255 }}'
        slugged: '{{ .Server.Name | slug | upper | trunc 64 }}'
        quoted: '{{ printf "%q" .Server.Name | trunc 255 }}'
        replaced: '{{ replace "-" "--" .Server.Name | lower | trunc 255 }}'
        url: '{{ urlquery .Server.Name | trunc 255 }}'
    retention: {keep_last: 3}
  - name: sluggy
    select: {tags: [backup]}
    schedule: {cron: "@daily"}
    image:
      name: '{{ .Server.Name | slug | trunc 200 | default "unnamed" }}-{{ .Policy.Name }}-{{ .Slot.Unix }}'
      metadata:
        first-tag: '{{ range .Server.Tags }}{{ . | trunc 20 }};{{ end }}'
    retention: {keep_last: 1}
`

// checkRendered asserts what Render promises: an error wraps ErrTemplate, and a
// result obeys Nova's limits (name 1..242 bytes, trimmed, valid UTF-8; metadata
// keys free of the reserved prefix, values at most 255 bytes).
func checkRendered(t *testing.T, what string, name string, md map[string]string, err error) {
	t.Helper()
	if err != nil {
		if !errors.Is(err, policy.ErrTemplate) {
			t.Fatalf("%s: error does not wrap ErrTemplate: %v", what, err)
		}
		if name != "" || md != nil {
			t.Fatalf("%s: error %v with a result %q %v", what, err, name, md)
		}
		return
	}
	if name == "" || len(name) > policy.MaxImageNameBytes || strings.TrimSpace(name) != name || !utf8.ValidString(name) {
		t.Fatalf("%s: accepted name %q (%d bytes)", what, name, len(name))
	}
	for k, v := range md {
		if k == "" || len(k) > policy.MaxMetadataKeyBytes || strings.HasPrefix(strings.ToLower(k), policy.ReservedMetadataPrefix) {
			t.Fatalf("%s: accepted metadata key %q", what, k)
		}
		if len(v) > policy.MaxMetadataValueBytes {
			t.Fatalf("%s: accepted metadata %q of %d bytes", what, k, len(v))
		}
	}
}

// FuzzRender renders the templates of a loaded config for servers with hostile
// names, ids, zones, tags and metadata (quotes, template syntax, control bytes,
// invalid UTF-8, huge values). Render must never panic, must be deterministic, and
// must either return a result within Nova's limits or an ErrTemplate error.
func FuzzRender(f *testing.F) {
	cfg, err := policy.Parse("render.yaml", []byte(renderConfig))
	if err != nil {
		f.Fatal(err)
	}
	f.Add("web-01", "6694d2c4-22ac-4208-a007-2939487f6999", "az-1", "backup,env=prod", "owner", "ops")
	f.Add(`{{ .Server.ID }}`, "{{", "}}", "{{ printf \"%999999d\" 1 }}", "owner", "{{template \"x\"}}")
	f.Add("  padded  ", "", "", "", "", "")
	f.Add(strings.Repeat("é", 200), "id", "az", strings.Repeat("t,", 500), "owner", strings.Repeat("x", 300))
	f.Add("\xff\xfe invalid", "\x00", "\n", "\xff", "imagekeeper_owner", "forged")
	f.Add("web/../../etc", "id%s%d", "☃", "a,,b", "owner", "\u202e")
	f.Add("-", "-", "-", "-", "-", "-")
	f.Fuzz(func(t *testing.T, name, id, az, tags, mdKey, mdVal string) {
		srv := policy.ServerInfo{ID: id, Name: name, AZ: az, Tags: strings.Split(tags, ","),
			Metadata: map[string]string{mdKey: mdVal, "owner": mdVal}}
		for _, p := range cfg.Policies {
			slot := p.Schedule.Next(time.Date(2024, 3, 10, 0, 0, 0, 0, time.UTC))
			d := policy.TemplateData{Server: srv, Policy: policy.PolicyInfo{Name: p.Name}, Slot: slot, Now: slot, RunID: "r"}
			n1, md1, err1 := p.Image.Render(d)
			checkRendered(t, p.Name, n1, md1, err1)
			n2, md2, err2 := p.Image.Render(d)
			if n1 != n2 || fmt.Sprint(md1) != fmt.Sprint(md2) || (err1 == nil) != (err2 == nil) {
				t.Fatalf("%s: Render is not deterministic: %q %v %v / %q %v %v", p.Name, n1, md1, err1, n2, md2, err2)
			}
		}
	})
}

// FuzzTemplateSource puts an arbitrary template source into the name and a
// metadata value of an otherwise valid policy file. The loader either refuses it
// with positioned Errors, or accepts a template that then renders within limits or
// fails with ErrTemplate for hostile servers, without panicking or running away
// (the loader refuses define/template, nested range and range over a number, and
// output is bounded).
func FuzzTemplateSource(f *testing.F) {
	for _, s := range []string{
		`{{ .Server.Name }}-{{ .Slot.Format "20060102" }}`,
		`{{ range .Server.Tags }}{{ range $.Server.Tags }}x{{ end }}{{ end }}`,
		`{{ range 1000000000 }}x{{ end }}`,
		`{{ printf "%0999999999d" 1 }}`,
		`{{ define "x" }}y{{ end }}{{ template "x" }}`,
		`{{ replace "" "xxxxxxxxxx" (printf "%060000d" 1) }}`,
		`{{ .Server.Metadata.owner }}{{ .Nope }}`,
		`{{ .Slot.AddDate 1000000 0 0 }}`,
		`{{ call .Slot.Format "x" }}`,
		`{{ with $x := .Server.Name }}{{ $x }}{{ else }}none{{ end }}`,
		`{{ index .Server.Tags 5 }}`,
		`{{ slice .Server.Name 3 1 }}`,
		`{{ len .Server.Tags | printf "%d" }}`,
		`{{ break }}`,
	} {
		f.Add(s, "web-01")
	}
	f.Fuzz(func(t *testing.T, src, serverName string) {
		q, _ := json.Marshal(src) // a JSON string is a YAML double-quoted scalar
		doc := "state: /tmp/x.db\npolicies:\n  - name: p\n    select: {tags: [backup]}\n    schedule: {cron: \"@daily\"}\n" +
			"    image:\n      name: " + string(q) + "\n      metadata: {m: " + string(q) + "}\n    retention: {keep_last: 1}\n"
		cfg, err := policy.Parse("src.yaml", []byte(doc))
		if err != nil {
			var es policy.Errors
			if !errors.As(err, &es) || len(es) == 0 {
				t.Fatalf("error is not policy.Errors: %T %v", err, err)
			}
			return
		}
		p := cfg.Policies[0]
		slot := time.Date(2024, 3, 10, 0, 0, 0, 0, time.UTC)
		for _, srv := range []policy.ServerInfo{
			{ID: "id", Name: serverName, Tags: []string{"a", "b"}, Metadata: map[string]string{"owner": serverName}},
			{ID: serverName, Name: strings.Repeat(serverName+"x", 64), Tags: strings.Split(serverName, ""), Metadata: nil},
		} {
			start := time.Now()
			n, md, err := p.Image.Render(policy.TemplateData{Server: srv, Policy: policy.PolicyInfo{Name: "p"}, Slot: slot, Now: slot})
			checkRendered(t, fmt.Sprintf("source %q", src), n, md, err)
			if d := time.Since(start); d > 10*time.Second {
				t.Fatalf("source %q took %s to render", src, d)
			}
		}
	})
}
