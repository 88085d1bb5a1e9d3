package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/imagekeeper/imagekeeper/cloud/simcloud"
)

// This file holds the helpers every CLI test shares: running a command in-process,
// starting a simulated cloud the commands can reach, and swapping a package-level
// clock or interval for one test.

// cli runs imagekeeper in-process, as main does but with its own streams, and
// returns the exit code, stdout and stderr.
func cli(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	m := &Main{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errb, Getenv: os.Getenv}
	code = m.Run(context.Background(), args)
	return code, out.String(), errb.String()
}

// startSim starts a simulator on loopback and points the OpenStack client at it:
// a clouds.yaml with one cloud named "sim" in dir, named by OS_CLIENT_CONFIG_FILE.
func startSim(t *testing.T, dir string, opts simcloud.Options) *simcloud.Sim {
	t.Helper()
	sim := simcloud.New(opts)
	if err := sim.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	cy := filepath.Join(dir, "clouds.yaml")
	if err := os.WriteFile(cy, sim.CloudsYAML("sim"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("OS_CLIENT_CONFIG_FILE", cy)
	return sim
}

// writeFile writes content to path and returns path.
func writeFile(t *testing.T, path, content string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// syncBuffer collects what a command or process running in another goroutine
// writes, while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// setForTest sets *p to v until the test ends: the commands read their clocks and
// poll intervals from package variables so that tests can make them fast and fixed.
func setForTest[T any](t *testing.T, p *T, v T) {
	t.Helper()
	old := *p
	*p = v
	t.Cleanup(func() { *p = old })
}

// TestEveryCommandParsesFlagsAlike runs every registered command with help, an
// unknown flag, a stray argument and, where the command has them, a bad -o and a
// bad log level: each must answer the same way before it loads a file or opens
// anything.
func TestEveryCommandParsesFlagsAlike(t *testing.T) {
	names := make([]string, 0, len(commands))
	for name := range commands {
		names = append(names, name)
	}
	slices.Sort(names)
	if len(names) < 12 {
		t.Fatalf("only %d commands registered: %v", len(names), names)
	}
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			code, stdout, stderr := cli(t, name, "-h")
			if code != exitOK || stdout != "" || stderr == "" {
				t.Errorf("-h: exit %d, stdout %q, stderr %q; want 0, the flags on stderr only", code, stdout, stderr)
			}
			in := func(names ...string) bool { return slices.Contains(names, name) }
			hasConfig := in("run", "images", "history", "why", "prune", "plan", "reconcile", "validate", "daemon")
			hasOutput := in("images", "history", "why", "prune", "plan", "reconcile", "validate")
			hasLogs := in("run", "prune", "plan", "reconcile", "daemon", "demo")
			for flag, want := range map[string]bool{
				"  -config string\n    \tpolicy file (default \"/etc/imagekeeper/imagekeeper.yaml\")\n": hasConfig,
				"  -o string\n    \toutput format: table or json (default \"table\")\n":                 hasOutput,
				"  -log-level string\n": hasLogs,
			} {
				if strings.Contains(stderr, flag) != want {
					t.Errorf("-h lists %q = %v, want %v:\n%s", flag, !want, want, stderr)
				}
			}

			if code, _, stderr := cli(t, name, "--no-such-flag"); code != exitUsage || !strings.Contains(stderr, "flag provided but not defined: -no-such-flag") {
				t.Errorf("unknown flag: exit %d, stderr %q", code, stderr)
			}

			// why takes one argument: give it one, after the flags as the flag package
			// wants, so that the check under test is the one that fails.
			var positional []string
			if name == "why" {
				positional = []string{"image-id"}
			}
			with := func(args ...string) []string {
				return slices.Concat([]string{name}, args, positional)
			}
			if code, _, stderr := cli(t, append(with(), "stray")...); code != exitUsage || !strings.Contains(stderr, "imagekeeper "+name+`: unexpected argument "stray"`) {
				t.Errorf("stray argument: exit %d, stderr %q", code, stderr)
			}
			if hasOutput {
				if code, stdout, stderr := cli(t, with("-o", "yaml")...); code != exitUsage || stdout != "" ||
					stderr != "imagekeeper "+name+": -o \"yaml\": use table or json\n" {
					t.Errorf("-o yaml: exit %d, stdout %q, stderr %q", code, stdout, stderr)
				}
			}
			if hasLogs {
				if code, _, stderr := cli(t, with("--log-level", "verbose")...); code != exitUsage ||
					stderr != "imagekeeper "+name+": --log-level \"verbose\": want debug, info, warn or error\n" {
					t.Errorf("--log-level verbose: exit %d, stderr %q", code, stderr)
				}
			}
		})
	}
}

// TestWhyWantsOneImage checks the one command with a positional argument names it
// when it is missing.
func TestWhyWantsOneImage(t *testing.T) {
	code, _, stderr := cli(t, "why")
	if code != exitUsage || stderr != "imagekeeper why: usage: imagekeeper why [--config FILE] [-o table|json] IMAGE_ID\n" {
		t.Errorf("why without an image: exit %d, stderr %q", code, stderr)
	}
}

func TestPlural(t *testing.T) {
	for _, tt := range []struct {
		n    int
		want string
	}{{0, "0 policies"}, {1, "1 policy"}, {2, "2 policies"}} {
		if got := plural(tt.n, "policy", "policies"); got != tt.want {
			t.Errorf("plural(%d) = %q, want %q", tt.n, got, tt.want)
		}
	}
}
