package policy

import (
	"strings"
	"testing"
	"time"
)

func TestLineageRetention(t *testing.T) {
	const pol = `
policies:
  - name: web
    select: {tags: [web]}
    schedule: {cron: "30 2 * * *"}
    image: {name: '{{ .Server.Name }}'}
    retention: {keep_last: 3}
`
	for _, c := range []struct {
		line string
		want time.Duration
		err  string
	}{
		{"", DefaultLineageRetention, ""},
		{"lineage_retention: 30d\n", 30 * day, ""},
		{"lineage_retention: \"0\"\n", 0, ""},
		{"lineage_retention: 2w\n", 14 * day, ""},
		{"lineage_retention: 1h\n", 0, "lineage_retention: must be 0 (never archive) or at least 1d"},
		{"lineage_retention: -3d\n", 0, "lineage_retention: must be 0"},
		{"lineage_retention: soon\n", 0, "lineage_retention"},
	} {
		cfg, err := Parse("p.yaml", []byte(c.line+pol))
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%q: err %v, want one containing %q", c.line, err, c.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", c.line, err)
			continue
		}
		if cfg.LineageRetention != c.want {
			t.Errorf("%q: lineage retention %v, want %v", c.line, cfg.LineageRetention, c.want)
		}
	}
}
