package store

import (
	"strings"
	"testing"
	"testing/fstest"
)

// TestEmbeddedMigrationsRunWithoutAGap guards the files this binary ships: a gap or a
// doubled number in store/migrations fails here before any database sees it.
func TestEmbeddedMigrationsRunWithoutAGap(t *testing.T) {
	ms, err := loadMigrations()
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) == 0 || LatestSchemaVersion() != len(ms) {
		t.Fatalf("LatestSchemaVersion() = %d with %d migrations embedded", LatestSchemaVersion(), len(ms))
	}
}

func TestParseMigrationsRefusesBadSequences(t *testing.T) {
	sql := &fstest.MapFile{Data: []byte("SELECT 1;")}
	cases := []struct {
		name    string
		files   []string
		wantErr string // empty: accepted
	}{
		{"contiguous", []string{"0001_a.sql", "0002_b.sql", "0003_c.sql"}, ""},
		{"unordered listing is sorted", []string{"0002_b.sql", "0001_a.sql"}, ""},
		{"gap", []string{"0001_a.sql", "0003_c.sql"}, "0003_c.sql: version 3 where 2 was due"},
		{"not starting at one", []string{"0002_b.sql"}, "version 2 where 1 was due"},
		{"shared version", []string{"0001_a.sql", "0002_b.sql", "0002_c.sql"}, "share version 2"},
		{"no number", []string{"init.sql"}, "name must be NNNN_description.sql"},
		{"zero", []string{"0000_a.sql"}, `bad version "0000"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fsys := fstest.MapFS{"migrations/README": &fstest.MapFile{Data: []byte("not a migration")}}
			for _, f := range c.files {
				fsys["migrations/"+f] = sql
			}
			ms, err := parseMigrations(fsys)
			if c.wantErr == "" {
				if err != nil {
					t.Fatalf("parseMigrations: %v", err)
				}
				for i, m := range ms {
					if m.version != i+1 {
						t.Fatalf("migration %d has version %d", i, m.version)
					}
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Fatalf("parseMigrations error = %v, want it to contain %q", err, c.wantErr)
			}
		})
	}
}
