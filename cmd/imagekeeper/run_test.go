package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/imagekeeper/imagekeeper/cloud/simcloud"
)

// TestLineageCommands runs run, images, history and why as a user would, against
// the simulator over HTTP, and checks what they print.
func TestLineageCommands(t *testing.T) {
	env := newLineageEnv(t)
	tags := []string{"backup=daily"}
	web1 := env.sim.AddServer(simcloud.ServerSpec{Name: "web-1", Tags: tags})
	env.sim.AddServer(simcloud.ServerSpec{Name: "web-2", Tags: tags})
	db1 := env.sim.AddServer(simcloud.ServerSpec{Name: "db-1", Tags: tags, Volumes: 2})
	broken := env.sim.AddServer(simcloud.ServerSpec{Name: "broken", Tags: tags, Status: "ERROR"})
	env.sim.AddServer(simcloud.ServerSpec{Name: "other", Tags: []string{"backup=never"}})

	code, out, errOut := env.cli(t, "run", "--config", env.config, "--policy", "web")
	if code != 0 {
		t.Fatalf("run: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	for _, re := range []string{
		`(?m)^web: slot 2026-11-24T18:30:00Z: 4 servers selected$`,
		`(?m)^[1-4]/4 web-1: image [0-9a-f-]{36} good \([0-9.]+m?s\)$`,
		`(?m)^[1-4]/4 db-1: image [0-9a-f-]{36} good \([0-9.]+m?s\)$`,
		`(?m)^[1-4]/4 broken: skipped \(error_state\)$`,
		`(?m)^web: slot 2026-11-24T18:30:00Z ran: 4 selected, 3 good, 0 failed, 1 skipped in .* \(\d+ cloud calls\)$`,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("run output does not match %s:\n%s", re, out)
		}
	}
	if env.sim.CreateImageCalls(broken) != 0 {
		t.Errorf("ERROR server was imaged")
	}

	// Same minute again: nothing new.
	code, out, _ = env.cli(t, "run", "--config", env.config, "--policy", "web")
	if code != 0 || !strings.Contains(out, "(already made for this slot)") || env.sim.CreateImageCalls(web1) != 1 {
		t.Errorf("second run: exit %d, %d calls for web-1\n%s", code, env.sim.CreateImageCalls(web1), out)
	}

	// images -o json: three good rows, the volume-backed one with two snapshots.
	code, out, errOut = env.cli(t, "images", "--config", env.config, "-o", "json")
	if code != 0 {
		t.Fatalf("images: exit %d: %s", code, errOut)
	}
	var ims []imageJSON
	if err := json.Unmarshal([]byte(out), &ims); err != nil {
		t.Fatalf("images json: %v\n%s", err, out)
	}
	var dbImage string
	if len(ims) != 3 {
		t.Fatalf("images: %d rows, want 3", len(ims))
	}
	for _, im := range ims {
		if im.State != "good" || im.ImageID == "" || im.Policy != "web" {
			t.Errorf("image row %+v", im)
		}
		if im.ServerID == db1 {
			dbImage = im.ImageID
			if !im.VolumeBacked || im.Snapshots != 2 {
				t.Errorf("db-1 image: volume_backed=%v snapshots=%d", im.VolumeBacked, im.Snapshots)
			}
		}
	}
	code, out, _ = env.cli(t, "images", "--config", env.config, "--server", web1)
	if lines := strings.Split(strings.TrimSpace(out), "\n"); code != 0 || len(lines) != 2 ||
		!strings.HasPrefix(lines[0], "IMAGE ID") || !strings.Contains(lines[1], "web-1-20261125-0230") || !strings.Contains(lines[1], "good") {
		t.Errorf("images --server: exit %d\n%s", code, out)
	}
	if code, _, errOut = env.cli(t, "images", "--config", env.config, "--image-state", "bogus"); code != exitUsage || !strings.Contains(errOut, "requested, creating") {
		t.Errorf("images --state bogus: exit %d: %s", code, errOut)
	}
	code, out, _ = env.cli(t, "images", "--config", env.config, "--image-state", "failed")
	if code != 0 || strings.TrimSpace(out) != "no images" {
		t.Errorf("images --state failed: exit %d %q", code, out)
	}

	// history: one slot, run twice.
	code, out, _ = env.cli(t, "history", "--config", env.config)
	if !regexp.MustCompile(`(?m)^web\s+2026-11-24T18:30:00Z\s+manual\s+ran\s+4\s+3\s+0\s+1\s+2\s`).MatchString(out) || code != 0 {
		t.Errorf("history: exit %d\n%s", code, out)
	}
	code, out, _ = env.cli(t, "history", "--config", env.config, "-o", "json", "--policy", "web")
	var slots []slotJSON
	if err := json.Unmarshal([]byte(out), &slots); err != nil || code != 0 || len(slots) != 1 || slots[0].Runs != 2 || slots[0].Existing != 3 {
		t.Errorf("history json: %v %+v", err, slots)
	}

	// why: where the image came from and every decision.
	code, out, errOut = env.cli(t, "why", "--config", env.config, dbImage)
	if code != 0 {
		t.Fatalf("why: exit %d: %s", code, errOut)
	}
	for _, want := range []string{
		"image " + dbImage + ` "db-1-20261125-0230"`,
		"state:     good",
		"policy:    web (policy version ",
		"server:    db-1 (" + db1 + "), volume-backed",
		"slot:      2026-11-24T18:30:00Z (2026-11-25 02:30 CST)",
		"imagekeeper_slot = 2026-11-24T18:30:00Z",
		"source = " + db1,
		"image_requested",
		"create_attempt",
		"image_creating",
		"snapshot_added",
		"image_good",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("why output lacks %q:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "  available"); n != 2 {
		t.Errorf("why lists %d available snapshots, want 2:\n%s", n, out)
	}
	code, out, _ = env.cli(t, "why", "--config", env.config, "-o", "json", dbImage)
	var wj whyJSON
	if err := json.Unmarshal([]byte(out), &wj); err != nil || code != 0 || len(wj.Snapshots) != 2 || wj.Snapshots[0].VolumeID == "" || len(wj.Events) < 5 {
		t.Errorf("why json: %v %+v", err, wj)
	}
	if code, _, errOut = env.cli(t, "why", "--config", env.config, "not-ours"); code != exitFailure || !strings.Contains(errOut, "not in the lineage") {
		t.Errorf("why unknown image: exit %d: %s", code, errOut)
	}
}

// TestRunExitCodes: a failed image makes run exit 1; a bad policy name or missing
// flag is a usage error.
func TestRunExitCodes(t *testing.T) {
	env := newLineageEnv(t)
	bad := env.sim.AddServer(simcloud.ServerSpec{Name: "bad", Tags: []string{"backup=daily"}})
	env.sim.AddServer(simcloud.ServerSpec{Name: "good", Tags: []string{"backup=daily"}})
	env.sim.FailNextSnapshot(bad)
	code, out, errOut := env.cli(t, "run", "--config", env.config, "--policy", "web")
	if code != exitFailure {
		t.Errorf("run with a failed image: exit %d, want 1", code)
	}
	if !regexp.MustCompile(`(?m)^[12]/2 bad: image [0-9a-f-]{36} failed \(.*\): image .* vanished while waiting`).MatchString(out) ||
		!strings.Contains(out, "1 good, 1 failed, 0 skipped") || !strings.Contains(errOut, "1 of 2 selected servers have no good image") {
		t.Errorf("run output:\n%s\nstderr:\n%s", out, errOut)
	}
	if code, _, errOut = env.cli(t, "run", "--config", env.config, "--policy", "nope"); code != exitUsage || !strings.Contains(errOut, `no policy "nope"`) {
		t.Errorf("unknown policy: exit %d: %s", code, errOut)
	}
	if code, _, _ = env.cli(t, "run", "--config", env.config); code != exitUsage {
		t.Errorf("missing --policy: exit %d", code)
	}
	if code, _, _ = env.cli(t, "run", "--config", filepath.Join(t.TempDir(), "missing.yaml"), "--policy", "web"); code != exitUsage {
		t.Errorf("missing config: exit %d", code)
	}
}

// TestRunPrunesAfterwards checks that `run` applies retention after its backup run,
// as the daemon does: with keep_last 3, the fourth slot deletes the oldest image of
// each server and its volume snapshots, and --no-prune leaves everything in place.
func TestRunPrunesAfterwards(t *testing.T) {
	env := newLineageEnv(t)
	tags := []string{"backup=daily"}
	env.sim.AddServer(simcloud.ServerSpec{Name: "web-1", Tags: tags})
	env.sim.AddServer(simcloud.ServerSpec{Name: "db-1", Tags: tags, Volumes: 1})
	env.snapshotWait = 5 * time.Second

	live := func() (images, snapshots int) { return len(env.sim.Images()), len(env.sim.Snapshots()) }
	base := time.Date(2026, 11, 24, 18, 30, 0, 0, time.UTC)
	for i := 0; i < 4; i++ {
		at := base.Add(time.Duration(i) * time.Minute)
		env.now = func() time.Time { return at }
		args := []string{"run", "--config", env.config, "--policy", "web"}
		if i == 3 {
			args = append(args, "--no-prune")
		}
		code, out, errOut := env.cli(t, args...)
		if code != 0 {
			t.Fatalf("run %d: exit %d\n%s\n%s", i, code, out, errOut)
		}
		if got := strings.Contains(out, "retention: web:"); got == (i == 3) {
			t.Errorf("run %d: retention line printed = %v\n%s", i, got, out)
		}
	}
	if images, snaps := live(); images != 8 || snaps != 4 {
		t.Fatalf("after 4 runs, the last with --no-prune: %d images, %d snapshots; want 8 and 4", images, snaps)
	}
	at := base.Add(4 * time.Minute)
	env.now = func() time.Time { return at }
	code, out, errOut := env.cli(t, "run", "--config", env.config, "--policy", "web")
	if code != 0 || !regexp.MustCompile(`(?m)^retention: web: 4 deleted`).MatchString(out) {
		t.Fatalf("fifth run: exit %d, want a retention line with 4 deleted\n%s\n%s", code, out, errOut)
	}
	// Prune waits until Cinder has really deleted the snapshots, so the cloud is
	// already in its final state when run returns.
	if images, snaps := live(); images != 6 || snaps != 3 {
		t.Fatalf("after the pruning run: %d images, %d snapshots; want 6 (3 per server) and 3", images, snaps)
	}
}

// TestWritingCommandsRespectTheDatabaseLock holds the lock a daemon holds and
// checks that run, prune and reconcile refuse to write beside it (naming the
// holder), that prune --dry-run and the read commands still work, and that the
// cloud was not asked for anything by the refused commands.
func TestWritingCommandsRespectTheDatabaseLock(t *testing.T) {
	env := newLineageEnv(t)
	env.sim.AddServer(simcloud.ServerSpec{Name: "web-1", Tags: []string{"backup=daily"}})
	if code, out, errOut := env.cli(t, "run", "--config", env.config, "--policy", "web"); code != 0 {
		t.Fatalf("run before the lock: exit %d\n%s\n%s", code, out, errOut)
	}
	lock, err := acquireLock(env.state)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Release()
	calls := env.sim.Requests()["compute.createImage"]
	for _, args := range [][]string{
		{"run", "--config", env.config, "--policy", "web"},
		{"prune", "--config", env.config},
		{"reconcile", "--config", env.config, "--fix"},
	} {
		code, _, errOut := env.cli(t, args...)
		if code != exitFailure || !strings.Contains(errOut, "is using this database") ||
			!strings.Contains(errOut, "pid "+strconv.Itoa(os.Getpid())) {
			t.Errorf("%s beside a held lock: exit %d, stderr %q; want exit 1 naming the holder", args[0], code, errOut)
		}
	}
	if n := env.sim.Requests()["compute.createImage"]; n != calls {
		t.Errorf("a refused run still called createImage (%d -> %d)", calls, n)
	}
	for _, args := range [][]string{
		{"prune", "--config", env.config, "--dry-run"},
		{"reconcile", "--config", env.config}, // report only
		{"images", "--config", env.config},
		{"history", "--config", env.config},
	} {
		if code, out, errOut := env.cli(t, args...); code != 0 {
			t.Errorf("%v beside a held lock: exit %d\n%s\n%s", args, code, out, errOut)
		}
	}
}
