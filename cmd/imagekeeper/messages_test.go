package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imagekeeper/imagekeeper/cloud/simcloud"
	"github.com/imagekeeper/imagekeeper/scheduler"
)

// messagesConfig is a one-policy file; %s are the cloud line and the state path.
const messagesConfig = `%s
state: %s
policies:
  - name: web
    select: {tags: [backup=daily]}
    schedule: {cron: "0 3 * * *"}
    image:
      name: '{{ .Server.Name }}-{{ .Slot.Format "0102" }}'
      wait_timeout: 20s
    retention: {keep_last: 3}
`

// TestMessagesPointAtTheCause runs the mistakes an operator makes and checks that
// each message names what to fix, once.
func TestMessagesPointAtTheCause(t *testing.T) {
	e := newEnv(t, simcloud.Options{ImageBuildTime: 20 * time.Millisecond, SnapshotBuildTime: simcloud.DefaultSnapshotBuildTime,
		SnapshotDeleteTime: simcloud.DefaultSnapshotDeleteTime}).forCommands()
	sim, clouds := e.sim, e.clouds
	sim.AddServer(simcloud.ServerSpec{Name: "web-1", Tags: []string{"backup=daily"}})
	config := func(cloudLine, state string) string {
		return writeFile(t, filepath.Join(t.TempDir(), "imagekeeper.yaml"), fmt.Sprintf(messagesConfig, cloudLine, state))
	}
	run := func(cfg string) (int, string, string) {
		return cli(t, "run", "--config", cfg, "--policy", "web", "--quiet")
	}

	t.Run("cloud not in clouds.yaml", func(t *testing.T) {
		code, _, stderr := run(config("cloud: prod", filepath.Join(t.TempDir(), "l.db")))
		want := `imagekeeper run: connect to the cloud: cloud "prod" not found in ` + clouds + " (entries: sim)\n"
		if code != exitFailure || stderr != want {
			t.Errorf("exit %d, stderr %q; want 1, %q", code, stderr, want)
		}
	})
	t.Run("neither cloud nor OS_CLOUD", func(t *testing.T) {
		t.Setenv("OS_CLOUD", "")
		code, _, stderr := run(config("", filepath.Join(t.TempDir(), "l.db")))
		if code != exitFailure || !strings.Contains(stderr, "set cloud: in the policy file, or OS_CLOUD") {
			t.Errorf("exit %d, stderr %q", code, stderr)
		}
	})
	t.Run("missing state directory", func(t *testing.T) {
		state := filepath.Join(t.TempDir(), "not", "yet", "lineage.db")
		code, stdout, stderr := run(config("cloud: sim", state))
		if code != exitOK || strings.Contains(stderr, "lock") {
			t.Errorf("run with a missing state directory: exit %d\n%s%s", code, stdout, stderr)
		}
		if fi, err := os.Stat(filepath.Dir(state)); err != nil || fi.Mode().Perm() != 0o750 {
			t.Errorf("state directory not created as the daemon does (0750): %v", err)
		}
	})
	t.Run("no doubled prefix", func(t *testing.T) {
		id := sim.SetFault(simcloud.Fault{Op: "compute.servers.list", ErrorStatus: 403})
		defer sim.ClearFault(id)
		code, stdout, stderr := run(config("cloud: sim", filepath.Join(t.TempDir(), "l.db")))
		if code != exitFailure || !strings.Contains(stderr, "list servers: ") || strings.Contains(stdout+stderr, "list servers: list servers") {
			t.Errorf("exit %d; want the failed listing named once:\n%s%s", code, stdout, stderr)
		}
	})
	t.Run("daemon error printed once", func(t *testing.T) {
		missing := filepath.Join(t.TempDir(), "missing.yaml")
		code, _, stderr := cli(t, "daemon", "--config", missing)
		if code != exitUsage || strings.Count(stderr, missing) != 1 || strings.Count(stderr, "\n") != 1 {
			t.Errorf("daemon --config missing: exit %d, want 2 and one line:\n%s", code, stderr)
		}
	})
}

// TestSummaryPlurals checks the counts of a run's summary read right at 1.
func TestSummaryPlurals(t *testing.T) {
	var b bytes.Buffer
	at := time.Date(2026, 11, 30, 3, 0, 0, 0, time.UTC)
	printSummary(&b, &scheduler.SlotReport{Policy: "web", Slot: at, Outcome: "ran", CloudCalls: 1, Started: at, Finished: at.Add(time.Second)})
	if !strings.Contains(b.String(), "(1 cloud call)") {
		t.Errorf("summary: %q", b.String())
	}
}
