package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imagekeeper/imagekeeper/cloud/simcloud"
)

// This file is the one home of what the command and daemon tests share: env, a
// simulated cloud with a directory for its clouds.yaml, the policy file and the
// lineage; the scenes built on it; and running a command in-process. The secret
// tests (secret_test.go) put a recorder in front of their own simulator instead.

// env is one simulated cloud on loopback and a directory holding its clouds.yaml,
// the policy file and the lineage database. The daemons a test starts in turn
// (e.start) and the commands it runs in-process (e.cli, after forCommands) share
// them.
type env struct {
	cliOpts // the clock and intervals of the commands e.cli runs
	t       *testing.T
	sim     *simcloud.Sim
	dir     string
	config  string
	state   string
	clouds  string
}

// envOption changes how newEnv serves its simulator.
type envOption func(*envSetup)

type envSetup struct {
	front func(sim http.Handler) http.Handler // nil: the simulator listens itself
}

// behind serves the simulator through front (a recorder in front of it, say) on a
// loopback test server, instead of on the simulator's own listener.
func behind(front func(sim http.Handler) http.Handler) envOption {
	return func(s *envSetup) { s.front = front }
}

// newEnv starts a simulator with simOpts; images it builds take 200 ms, snapshots
// 100 ms and snapshot deletions 50 ms unless simOpts says otherwise.
func newEnv(t *testing.T, simOpts simcloud.Options, opts ...envOption) *env {
	t.Helper()
	var s envSetup
	for _, o := range opts {
		o(&s)
	}
	if simOpts.ImageBuildTime == 0 {
		simOpts.ImageBuildTime = 200 * time.Millisecond
	}
	if simOpts.SnapshotBuildTime == 0 {
		simOpts.SnapshotBuildTime = 100 * time.Millisecond
	}
	if simOpts.SnapshotDeleteTime == 0 {
		simOpts.SnapshotDeleteTime = 50 * time.Millisecond
	}
	simOpts.DeterministicIDs = true // ids of the seed alone: ties in listings break the same way every run
	sim := simcloud.New(simOpts)
	if s.front != nil {
		srv := httptest.NewServer(s.front(sim.Handler()))
		t.Cleanup(srv.Close)
		sim.SetBaseURL(srv.URL)
	} else {
		if err := sim.Start("127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { sim.Close() })
	}
	dir := t.TempDir()
	e := &env{t: t, sim: sim, dir: dir, config: filepath.Join(dir, "imagekeeper.yaml"),
		state: filepath.Join(dir, "lineage.db"), clouds: filepath.Join(dir, "clouds.yaml")}
	if err := os.WriteFile(e.clouds, sim.CloudsYAML("sim"), 0o600); err != nil {
		t.Fatal(err)
	}
	return e
}

// forCommands points the commands the test runs in-process at the simulator:
// OS_CLIENT_CONFIG_FILE names its clouds.yaml, as in an operator's shell. (A daemon
// is given the file directly.) The variable is the process's, so a test that calls
// forCommands cannot run in parallel.
func (e *env) forCommands() *env {
	e.t.Setenv("OS_CLIENT_CONFIG_FILE", e.clouds)
	return e
}

// writeConfig writes a policy file for a daemon with the given policies section.
func (e *env) writeConfig(policies string) {
	e.t.Helper()
	doc := fmt.Sprintf("cloud: sim\nstate: %s\nlisten: 127.0.0.1:0\nallow_sub_minute: true\n"+
		"limits: {concurrency: 4, requests_per_second: 200}\npolicies:\n%s", e.state, policies)
	// Write to a temp file and rename, as editors and config managers do, so that the
	// watcher never reads half a file.
	tmp := e.config + ".tmp"
	if err := os.WriteFile(tmp, []byte(doc), 0o644); err != nil {
		e.t.Fatal(err)
	}
	if err := os.Rename(tmp, e.config); err != nil {
		e.t.Fatal(err)
	}
}

// lineageCLIConfig is the policy file of the lineage commands' scene: %s is the
// state path.
const lineageCLIConfig = `cloud: sim
state: %s
limits: {concurrency: 4, requests_per_second: 500}
policies:
  - name: web
    select:
      tags: [backup=daily]
    schedule:
      cron: "30 2 * * *"
      timezone: Asia/Shanghai
    image:
      name: '{{ .Server.Name }}-{{ .Slot.Format "20060102-1504" }}'
      metadata:
        source: '{{ .Server.ID }}'
      wait_timeout: 20s
    retention:
      keep_last: 3
`

// lineageNow is the clock of the lineage commands' scene: 42 s into the slot
// 2026-11-24T18:30:00Z of lineageCLIConfig's policy.
func lineageNow() time.Time { return time.Date(2026, 11, 24, 18, 30, 42, 0, time.UTC) }

// newLineageEnv is the scene of the lineage commands (run, images, history, why):
// a simulator with seed 7 whose images take 80 ms and snapshots 50 ms, the policy
// file lineageCLIConfig, and commands on lineageNow that poll every 10 ms.
func newLineageEnv(t *testing.T) *env {
	t.Helper()
	e := newEnv(t, simcloud.Options{Seed: 7, ImageBuildTime: 80 * time.Millisecond,
		SnapshotBuildTime: 50 * time.Millisecond, SnapshotDeleteTime: simcloud.DefaultSnapshotDeleteTime}).forCommands()
	writeFile(t, e.config, fmt.Sprintf(lineageCLIConfig, e.state))
	e.now, e.pollInterval = lineageNow, 10*time.Millisecond
	return e
}

// retentionCLIConfig is the policy file of the retention commands' scene: %s is
// the state path, %d keep_last.
const retentionCLIConfig = `cloud: sim
state: %s
limits: {concurrency: 4, requests_per_second: 500}
policies:
  - name: nightly
    select:
      tags: [backup=nightly]
    schedule:
      cron: "30 2 * * *"
      timezone: Asia/Shanghai
    image:
      name: '{{ .Server.Name }}-{{ .Slot.Format "0102" }}'
      wait_timeout: 20s
    retention:
      keep_last: %d
`

// retentionEnv is a simulator on real time (short build and delete times), a
// clouds.yaml and a policy file, with two days of images made by `run`.
type retentionEnv struct {
	*env
	app string
	db  string
}

func newRetentionEnv(t *testing.T) *retentionEnv {
	t.Helper()
	e := newEnv(t, simcloud.Options{Seed: 11, ImageBuildTime: 40 * time.Millisecond, SnapshotBuildTime: 30 * time.Millisecond,
		SnapshotDeleteTime: 30 * time.Millisecond}).forCommands()
	env := &retentionEnv{env: e}
	// `run` prunes after its slot: while the history is made, keep all of it.
	writeFile(t, env.config, fmt.Sprintf(retentionCLIConfig, env.state, 5))
	tags := []string{"backup=nightly"}
	env.app = e.sim.AddServer(simcloud.ServerSpec{Name: "app", Tags: tags})
	env.db = e.sim.AddServer(simcloud.ServerSpec{Name: "db", Tags: tags, Volumes: 2})

	env.pollInterval, env.snapshotWait = 10*time.Millisecond, 5*time.Second
	// Two days of slots, fixed, and in the past of the real clock.
	for _, day := range []int{19, 20} {
		at := time.Date(2026, 11, day, 10, 0, 0, 0, time.UTC)
		env.now = func() time.Time { return at }
		if code, out, errOut := env.cli(t, "run", "--config", env.config, "--policy", "nightly", "--quiet"); code != 0 {
			t.Fatalf("run: exit %d\n%s\n%s", code, out, errOut)
		}
	}
	writeFile(t, env.config, fmt.Sprintf(retentionCLIConfig, env.state, 1))
	return env
}

// serverNamed returns the simulator's server with that name.
func (e *env) serverNamed(t *testing.T, name string) simcloud.ServerState {
	t.Helper()
	for _, s := range e.sim.Servers() {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("no server named %s in the cloud", name)
	return simcloud.ServerState{}
}

// cli runs imagekeeper in-process, as main does but with its own streams, and
// returns the exit code, stdout and stderr.
func cli(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	return cliOpts{}.cli(t, args...)
}

// cliOpts are the clock and intervals a test gives the commands it runs, as fields
// of the Main they run on; the zero value means the real ones.
type cliOpts struct {
	now          func() time.Time
	pollInterval time.Duration
	snapshotWait time.Duration
}

// cli runs imagekeeper in-process with o's clock and intervals.
func (o cliOpts) cli(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	m := &Main{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errb, Getenv: os.Getenv,
		Now: o.now, PollInterval: o.pollInterval, SnapshotWait: o.snapshotWait}
	code = m.Run(context.Background(), args)
	return code, out.String(), errb.String()
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
