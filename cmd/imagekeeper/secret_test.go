package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imagekeeper/imagekeeper/cloud/simcloud"
)

// Canary credentials: distinctive enough that any appearance in output is a leak
// and not a coincidence.
const (
	leakPassword      = "Pw-canary-7Qz!x9#Lk2"
	leakAppCredSecret = "AC-canary-secret-3fVb81TmWq"
	leakWrongPassword = "Wrong-canary-pw-44ZZq"
)

// tokenRecorder remembers every Keystone token the simulator issues, so the test
// can look for those too: a token is as good as the password for its lifetime.
type tokenRecorder struct {
	mu     sync.Mutex
	tokens []string
	next   http.Handler
}

func (r *tokenRecorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	rw := &headerSpy{ResponseWriter: w, onHeader: func(h http.Header) {
		if tok := h.Get("X-Subject-Token"); tok != "" {
			r.mu.Lock()
			r.tokens = append(r.tokens, tok)
			r.mu.Unlock()
		}
	}}
	r.next.ServeHTTP(rw, req)
}

func (r *tokenRecorder) issued() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.tokens...)
}

type headerSpy struct {
	http.ResponseWriter
	onHeader func(http.Header)
	once     sync.Once
}

func (h *headerSpy) WriteHeader(code int) {
	h.once.Do(func() { h.onHeader(h.Header()) })
	h.ResponseWriter.WriteHeader(code)
}

func (h *headerSpy) Write(b []byte) (int, error) {
	h.once.Do(func() { h.onHeader(h.Header()) })
	return h.ResponseWriter.Write(b)
}

// secretFixture is an env whose simulator's credentials are canaries, with a
// recorder in front of it that collects the Keystone tokens it issues, a
// clouds.yaml with a password entry, an application-credential entry and one with
// a wrong password, and a policy file per entry.
type secretFixture struct {
	sim     *simcloud.Sim
	tokens  *tokenRecorder
	configs map[string]string // cloud name -> policy file
}

func newSecretFixture(t *testing.T) *secretFixture {
	t.Helper()
	rec := &tokenRecorder{}
	e := newEnv(t, simcloud.Options{
		Seed:                1,
		Password:            leakPassword,
		AppCredentialSecret: leakAppCredSecret,
		ImageBuildTime:      50 * time.Millisecond,
		SnapshotBuildTime:   50 * time.Millisecond,
		SnapshotDeleteTime:  10 * time.Millisecond,
	}, behind(func(sim http.Handler) http.Handler { rec.next = sim; return rec }))
	sim := e.sim
	for i := 1; i <= 2; i++ {
		sim.AddServer(simcloud.ServerSpec{Name: fmt.Sprintf("web-%d", i), Tags: []string{"backup=leak"}})
	}
	sim.AddServer(simcloud.ServerSpec{Name: "db-1", Tags: []string{"backup=leak"}, Volumes: 1})
	sim.AddServer(simcloud.ServerSpec{Name: "broken", Tags: []string{"backup=leak"}, Status: "ERROR"})

	dir := e.dir
	// One clouds.yaml with three entries: the simulator writes each; the wrong one
	// is the password entry with another password.
	pw := string(sim.CloudsYAML("leak-pw"))
	ac := strings.TrimPrefix(string(sim.CloudsYAMLAppCredential("leak-ac")), "clouds:\n")
	bad := strings.TrimPrefix(strings.Replace(string(sim.CloudsYAML("leak-bad")), leakPassword, leakWrongPassword, 1), "clouds:\n")
	cloudsYAML := pw + ac + bad
	for _, s := range []string{leakPassword, leakAppCredSecret, leakWrongPassword} {
		if !strings.Contains(cloudsYAML, s) {
			t.Fatalf("clouds.yaml lacks the canary %q: the test would look for the wrong thing:\n%s", s, cloudsYAML)
		}
	}
	writeFile(t, e.clouds, cloudsYAML)
	e.forCommands()
	t.Setenv("OS_CLOUD", "")

	f := &secretFixture{sim: sim, tokens: rec, configs: map[string]string{}}
	for _, c := range []string{"leak-pw", "leak-ac", "leak-bad"} {
		cfg := fmt.Sprintf(`cloud: %s
state: %s
listen: 127.0.0.1:0
allow_sub_minute: true
policies:
  - name: web
    select: {tags: [backup=leak]}
    schedule: {cron: "@every 1s"}
    image:
      name: '{{ .Server.Name }}-{{ .Slot.Format "150405.000" }}'
      wait_timeout: 30s
    retention: {keep_last: 2}
`, c, filepath.Join(dir, c+".db"))
		p := filepath.Join(dir, c+".yaml")
		if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		f.configs[c] = p
	}
	return f
}

// TestSecretsNeverPrinted loads real-looking credentials (a password and an
// application-credential secret), drives every CLI command that exists against a
// simulated cloud that accepts them, at debug log level in both log formats, and
// greps every line each command printed for the credentials and the tokens they
// bought. A wrong password must not be echoed in the error either.
func TestSecretsNeverPrinted(t *testing.T) {
	f := newSecretFixture(t)
	ctx := context.Background()
	pw, ac, bad := f.configs["leak-pw"], f.configs["leak-ac"], f.configs["leak-bad"]

	type step struct {
		args     []string
		wantCode int  // -1: any
		optional bool // the command may not exist yet
	}
	debug := []string{"--log-level", "debug"}
	steps := []step{
		{args: []string{"validate", "--config", pw}, wantCode: 0},
		{args: append([]string{"run", "--config", pw, "--policy", "web"}, debug...), wantCode: 0},
		{args: append([]string{"run", "--config", pw, "--policy", "web", "--log-format", "json"}, debug...), wantCode: 0},
		{args: append([]string{"run", "--config", ac, "--policy", "web"}, debug...), wantCode: 0},
		{args: append([]string{"run", "--config", bad, "--policy", "web", "--log-format", "json"}, debug...), wantCode: -1},
		{args: append([]string{"run", "--config", bad, "--policy", "web"}, debug...), wantCode: -1},
		{args: []string{"images", "--config", pw}, wantCode: 0},
		{args: []string{"images", "--config", pw, "-o", "json"}, wantCode: 0},
		{args: []string{"history", "--config", pw}, wantCode: 0},
		{args: []string{"history", "--config", pw, "-o", "json"}, wantCode: 0},
		{args: append([]string{"plan", "--config", pw}, debug...), wantCode: 0, optional: true},
		{args: append([]string{"prune", "--config", pw, "--dry-run"}, debug...), wantCode: -1, optional: true},
		{args: append([]string{"reconcile", "--config", pw}, debug...), wantCode: -1, optional: true},
		{args: append([]string{"reconcile", "--config", bad}, debug...), wantCode: -1, optional: true},
	}
	var outputs []string
	ran := 0
	names := commandNames(t)
	for _, s := range steps {
		if !slices.Contains(names, s.args[0]) {
			if !s.optional {
				t.Errorf("command %s does not exist", s.args[0])
			}
			continue
		}
		code, stdout, stderr := cli(t, s.args...)
		ran++
		name := strings.Join(s.args, " ")
		if s.wantCode >= 0 && code != s.wantCode {
			t.Errorf("%s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", name, code, s.wantCode, stdout, stderr)
		}
		outputs = append(outputs, "$ "+name+"\n"+stdout+stderr)
	}

	// why, for an image the runs made.
	if slices.Contains(names, "why") {
		imgs := f.sim.Images()
		if len(imgs) == 0 {
			t.Fatal("the runs made no image: the credentials were never used")
		}
		for _, o := range []string{"table", "json"} {
			code, stdout, stderr := cli(t, "why", "--config", pw, "-o", o, imgs[0].ID)
			if code != 0 {
				t.Errorf("why %s: exit %d\n%s%s", imgs[0].ID, code, stdout, stderr)
			}
			outputs = append(outputs, "$ why "+imgs[0].ID+"\n"+stdout+stderr)
		}
	}

	// The daemon, at debug level in JSON, until it has made an image of its own.
	if slices.Contains(names, "daemon") {
		before := len(f.sim.Images())
		dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		var stdout, stderr syncBuffer
		done := make(chan int)
		go func() {
			m := &Main{Stdin: strings.NewReader(""), Stdout: &stdout, Stderr: &stderr, Getenv: os.Getenv}
			done <- m.Run(dctx, []string{"daemon", "--config", ac, "--log-level", "debug", "--log-format", "json",
				"--drain-timeout", "1s"})
		}()
		for dctx.Err() == nil && len(f.sim.Images()) == before {
			time.Sleep(50 * time.Millisecond)
		}
		made := len(f.sim.Images()) > before
		cancel()
		<-done
		if !made {
			t.Errorf("the daemon made no image within 30s:\n%s", stderr.String())
		}
		outputs = append(outputs, "$ daemon\n"+stdout.String()+stderr.String())
	}

	tokens := f.tokens.issued()
	if len(tokens) == 0 {
		t.Fatal("the simulator issued no token: no command authenticated")
	}
	if ran < 8 {
		t.Fatalf("only %d commands ran", ran)
	}
	secrets := append([]string{leakPassword, leakAppCredSecret, leakWrongPassword}, tokens...)
	lines := 0
	for _, out := range outputs {
		for _, line := range strings.Split(out, "\n") {
			lines++
			for _, s := range secrets {
				if strings.Contains(line, s) {
					t.Errorf("secret %.6s... printed: %s", s, line)
				}
			}
		}
	}
	// Debug logging must have said something, or the grep proves little.
	if lines < 40 {
		t.Errorf("only %d lines of output: is debug logging on?", lines)
	}
	t.Logf("%d commands, %d lines of output, %d secrets (%d tokens): none printed", len(outputs), lines, len(secrets), len(tokens))
}
