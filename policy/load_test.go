package policy

import (
	"errors"
	"flag"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var updateErrors = flag.Bool("update-errors", false, "rewrite the .err golden files of testdata/*.bad.yaml")

// TestBadFiles loads every testdata/*.bad.yaml and compares the full error text,
// one FILE:LINE:COL line per problem, with its .err golden file.
func TestBadFiles(t *testing.T) {
	files, err := filepath.Glob("testdata/*.bad.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 30 {
		t.Fatalf("only %d bad files; the issue asks for at least 30", len(files))
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			cfg, err := Load(file)
			if err == nil {
				t.Fatalf("loaded without error: %d policies", len(cfg.Policies))
			}
			var es Errors
			if !errors.As(err, &es) {
				t.Fatalf("error is %T, want policy.Errors: %v", err, err)
			}
			for _, e := range es {
				if e.File != file {
					t.Errorf("error names file %q, want %q", e.File, file)
				}
			}
			got := err.Error() + "\n"
			golden := file + ".err"
			if *updateErrors {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("read golden file (run go test -update-errors to create it): %v", err)
			}
			if got != string(want) {
				t.Errorf("errors differ from %s\n got:\n%s\nwant:\n%s", golden, got, want)
			}
		})
	}
}

func TestLoadUnreadable(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "missing.yaml"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("err = %v, want fs.ErrNotExist", err)
	}
	var es Errors
	if errors.As(err, &es) {
		t.Fatalf("an unreadable file must not be policy.Errors: %v", err)
	}
}

func TestFileTooLarge(t *testing.T) {
	data := []byte("cloud: prod\n# " + strings.Repeat("x", MaxFileSize) + "\n")
	path := filepath.Join(t.TempDir(), "big.yaml")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Load(path)
	var es Errors
	if !errors.As(err, &es) || len(es) != 1 {
		t.Fatalf("err = %v, want one policy error", err)
	}
	want := path + ": file is larger than 1 MiB (1048577 bytes or more); policy files must be at most 1048576 bytes"
	if es[0].Error() != want {
		t.Fatalf("got %q\nwant %q", es[0].Error(), want)
	}
}

func TestFieldErrorFormat(t *testing.T) {
	rows := []struct {
		e    FieldError
		want string
	}{
		{FieldError{File: "p.yaml", Line: 3, Col: 5, Policy: "web", Field: "schedule.cron", Msg: "bad"}, `p.yaml:3:5: policy "web": schedule.cron: bad`},
		{FieldError{File: "p.yaml", Line: 3, Col: 5, Field: "limits.concurrency", Msg: "bad"}, `p.yaml:3:5: limits.concurrency: bad`},
		{FieldError{File: "p.yaml", Line: 7, Msg: "invalid YAML: x"}, `p.yaml:7: invalid YAML: x`},
		{FieldError{File: "p.yaml", Msg: "too big"}, `p.yaml: too big`},
	}
	for _, r := range rows {
		if got := r.e.Error(); got != r.want {
			t.Errorf("got %q, want %q", got, r.want)
		}
	}
	es := Errors{&rows[0].e, &rows[1].e}
	if got, want := es.Error(), rows[0].want+"\n"+rows[1].want; got != want {
		t.Errorf("Errors.Error() = %q, want %q", got, want)
	}
}
