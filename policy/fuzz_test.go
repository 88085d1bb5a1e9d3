package policy

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// FuzzLoad feeds arbitrary bytes to the loader. It must never panic, must return
// either a Config or Errors with positions inside the file, and a Config it
// returns must be usable: schedules answer Next and templates render.
func FuzzLoad(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/*.good.yaml")
	bad, _ := filepath.Glob("testdata/*.bad.yaml")
	examples, _ := filepath.Glob("../examples/*.yaml")
	for _, path := range append(append(seeds, bad...), examples...) {
		data, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("fuzz.yaml", data)
		if err != nil {
			var es Errors
			if !errors.As(err, &es) || len(es) == 0 {
				t.Fatalf("error is not a non-empty policy.Errors: %T %v", err, err)
			}
			for _, e := range es {
				if e.File != "fuzz.yaml" || e.Msg == "" || e.Line < 0 || e.Col < 0 {
					t.Fatalf("malformed error %#v", e)
				}
			}
			return
		}
		if cfg == nil || len(cfg.Policies) == 0 {
			t.Fatal("nil error without policies")
		}
		now := time.Date(2024, 3, 10, 6, 0, 0, 0, time.UTC)
		for _, p := range cfg.Policies {
			next := p.Schedule.Next(now)
			if next.IsZero() || !next.After(now) {
				t.Fatalf("policy %s: Next(%s) = %s", p.Name, now, next)
			}
			if l := p.Schedule.Latest(next); !l.Equal(next) {
				t.Fatalf("policy %s: Latest(Next) = %s, want %s", p.Name, l, next)
			}
			_, _, _ = p.Image.Render(TemplateData{Server: sampleServer, Slot: next, Now: next})
		}
	})
}
