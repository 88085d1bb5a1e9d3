package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/imagekeeper/imagekeeper/cloud/simcloud"
	"github.com/imagekeeper/imagekeeper/scheduler"
)

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

func TestPruneCommandDryRunThenDelete(t *testing.T) {
	env := newRetentionEnv(t)
	images, snaps := env.sim.Images(), env.sim.Snapshots()
	if len(images) != 4 || len(snaps) != 4 {
		t.Fatalf("setup: %d images, %d snapshots; want 4 and 4", len(images), len(snaps))
	}

	code, out, errOut := env.cli(t, "prune", "--config", env.config, "--dry-run")
	if code != 0 {
		t.Fatalf("prune --dry-run: exit %d\n%s\n%s", code, out, errOut)
	}
	for _, re := range []string{
		`(?m)^IMAGE\s+SERVER\s+AGE\s+DECISION\s+REASON$`,
		`(?m)^app-1119\s+app\s+\d+d\d+h\s+delete\s+no rule keeps it$`,
		`(?m)^db-1120\s+db\s+\d+d\d+h\s+keep\s+keep_last 1/1$`,
		`(?m)^nightly: 2 to delete, 2 keep over 2 servers \[dry run: nothing changed\]$`,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("dry-run output does not match %s:\n%s", re, out)
		}
	}
	if !reflect.DeepEqual(env.sim.Images(), images) || !reflect.DeepEqual(env.sim.Snapshots(), snaps) {
		t.Fatal("prune --dry-run changed the cloud")
	}

	code, out, errOut = env.cli(t, "prune", "--config", env.config, "-o", "json")
	if code != 0 {
		t.Fatalf("prune: exit %d\n%s\n%s", code, out, errOut)
	}
	var reps []pruneReportJSON
	if err := json.Unmarshal([]byte(out), &reps); err != nil {
		t.Fatalf("prune -o json: %v\n%s", err, out)
	}
	if len(reps) != 1 || reps[0].Counts["deleted"] != 2 || reps[0].Counts["keep"] != 2 || reps[0].SnapshotsDeleted != 2 {
		t.Fatalf("prune report = %+v", reps)
	}
	for _, im := range reps[0].Images {
		if _, there := env.sim.Image(im.ImageID); there != (im.Action == "keep") {
			t.Errorf("image %s: action %s, in the cloud = %v", im.Name, im.Action, there)
		}
		for _, sn := range im.Snapshots {
			if _, there := env.sim.Snapshot(sn.SnapshotID); there {
				t.Errorf("snapshot %s of deleted image %s still in the cloud (%s)", sn.SnapshotID, im.Name, sn.State)
			}
		}
	}
	if n := len(env.sim.Snapshots()); n != 2 {
		t.Errorf("%d snapshots left, want the kept db image's 2", n)
	}

	// Bad flags are usage errors.
	if code, _, _ := env.cli(t, "prune", "--config", env.config, "-o", "yaml"); code != exitUsage {
		t.Errorf("prune -o yaml: exit %d, want %d", code, exitUsage)
	}
	if code, _, errOut := env.cli(t, "prune", "--config", env.config, "--policy", "nope"); code != exitUsage || !strings.Contains(errOut, "nightly") {
		t.Errorf("prune --policy nope: exit %d: %s", code, errOut)
	}
}

func TestReconcileCommand(t *testing.T) {
	env := newRetentionEnv(t)
	// The db server's older image vanishes behind our back: its row is known but
	// gone, and its two volume snapshots are leftovers.
	var dbOld string
	for _, im := range env.sim.Images() {
		if im.ServerID == env.db && (dbOld == "" || im.CreatedAt.Before(mustImage(t, env, dbOld).CreatedAt)) {
			dbOld = im.ID
		}
	}
	env.sim.DeleteImageDirect(dbOld)

	code, out, errOut := env.cli(t, "reconcile", "--config", env.config)
	if code != 0 {
		t.Fatalf("reconcile: exit %d\n%s\n%s", code, out, errOut)
	}
	for _, re := range []string{
		`(?m)^known_gone\s+nightly\s+\S+\s+` + regexp.QuoteMeta(dbOld) + `\s+-\s+lineage says good, Glance answers 404\s+would mark failed$`,
		`(?m)^leftover_snapshot\s+nightly\s+.*\s+would delete \(--fix\)$`,
		`(?m)^reconcile \(report only, nothing changed; --fix to act\): 3 stamped images, 4 snapshots in the cloud: stamped_unknown 0, stamped_inherited 0, known_gone 1, leftover_snapshot 2, hollow_image 0, late_good 0, duplicate 0$`,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("reconcile output does not match %s:\n%s", re, out)
		}
	}
	if n := len(env.sim.Snapshots()); n != 4 {
		t.Fatalf("reconcile without --fix deleted snapshots: %d left", n)
	}
	// Report only means the lineage too: the row of the gone image still says good.
	if code, out, _ := env.cli(t, "images", "--config", env.config, "--image-state", "good", "-o", "json"); code != 0 || !strings.Contains(out, dbOld) {
		t.Fatalf("reconcile without --fix changed the row of %s:\n%s", dbOld, out)
	}

	code, out, errOut = env.cli(t, "reconcile", "--config", env.config, "--fix", "-o", "json")
	if code != 0 {
		t.Fatalf("reconcile --fix: exit %d\n%s\n%s", code, out, errOut)
	}
	var rep reconcileJSON
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Fixed["known_gone"] != 1 || rep.Fixed["leftover_snapshot"] != 2 || rep.ReportOnly {
		t.Fatalf("fixed = %v\n%s", rep.Fixed, out)
	}
	if n := len(env.sim.Snapshots()); n != 2 {
		t.Fatalf("after --fix %d snapshots left, want 2", n)
	}
	code, out, _ = env.cli(t, "reconcile", "--config", env.config)
	if code != 0 || !strings.Contains(out, "known_gone 0, leftover_snapshot 0") {
		t.Fatalf("reconcile after fix: exit %d\n%s", code, out)
	}
}

func mustImage(t *testing.T, env *retentionEnv, id string) simcloud.ImageState {
	t.Helper()
	im, ok := env.sim.Image(id)
	if !ok {
		t.Fatalf("image %s missing", id)
	}
	return im
}

func TestPlanCommand(t *testing.T) {
	env := newRetentionEnv(t)
	env.now = func() time.Time { return time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC) }
	images := env.sim.Images()
	env.sim.AddServer(simcloud.ServerSpec{Name: "zz-broken", Tags: []string{"backup=nightly"}, Status: "ERROR"})

	code, out, errOut := env.cli(t, "plan", "--config", env.config, "--horizon", "3d")
	if code != 0 {
		t.Fatalf("plan: exit %d\n%s\n%s", code, out, errOut)
	}
	for _, re := range []string{
		`(?m)^policy nightly: schedule "30 2 \* \* \*" in Asia/Shanghai$`,
		// 12:00 UTC is 20:00 in Shanghai: the next slot is 02:30 CST on Dec 2.
		`(?m)^  next slots: 2026-12-02 02:30 CST, 2026-12-03 02:30 CST, 2026-12-04 02:30 CST, 2026-12-05 02:30 CST, 2026-12-06 02:30 CST$`,
		`(?m)^  servers selected now: 3$`,
		`(?m)^    app\s+\S+\s+app-1202$`,
		`(?m)^    zz-broken\s+\S+\s+\(server in ERROR: skipped until it recovers\)$`,
		`(?m)^  retention today: 4 images, 2 would be deleted$`,
		`(?m)^  horizon 3d: 3 slots, 6 images created, 8 deleted$`,
		// The first simulated prune drops both servers' remaining old images too.
		`(?m)^    2026-12-02 02:30 CST  \+2  -4: `,
		// Within a step deletions are listed by server id, which the simulator draws
		// at random: either order.
		`(?m)^    2026-12-04 02:30 CST  \+2  -2: (app-1203, db-1203|db-1203, app-1203)$`,
		// The server in ERROR gets no image, so nothing of it shows at the end.
		`(?m)^  images per server at the end: app 1, db 1$`,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("plan output does not match %s:\n%s", re, out)
		}
	}
	if !reflect.DeepEqual(env.sim.Images(), images) {
		t.Fatal("plan changed the cloud")
	}

	// Without a lineage, plan says so and creates no database.
	dir := t.TempDir()
	fresh := filepath.Join(dir, "none.db")
	cfg2 := writeFile(t, filepath.Join(dir, "fresh.yaml"), fmt.Sprintf(retentionCLIConfig, fresh, 1))
	code, out, _ = env.cli(t, "plan", "--config", cfg2, "-o", "json")
	if code != 0 || !strings.Contains(out, "no lineage yet") {
		t.Fatalf("plan without lineage: exit %d\n%s", code, out)
	}
	if _, err := os.Stat(fresh); !os.IsNotExist(err) {
		t.Fatalf("plan created the database: %v", err)
	}
	if code, _, _ := env.cli(t, "plan", "--config", cfg2, "--horizon", "soon"); code != exitUsage {
		t.Errorf("plan --horizon soon: exit %d, want %d", code, exitUsage)
	}
}

// TestPruneSummaryWords checks the summary line counts in words, one and many.
func TestPruneSummaryWords(t *testing.T) {
	for _, tt := range []struct {
		rep  scheduler.PruneReport
		want string
	}{
		{scheduler.PruneReport{Policy: "p", Counts: map[scheduler.PruneAction]int{scheduler.PruneDeleted: 1}, SnapshotsDeleted: 1, Servers: 1},
			"p: 1 deleted (1 volume snapshot deleted) over 1 server"},
		{scheduler.PruneReport{Policy: "p", Counts: map[scheduler.PruneAction]int{scheduler.PruneDeleted: 2, scheduler.PruneKeep: 3},
			SnapshotsDeleted: 2, Servers: 2, ServersGone: 1, DryRun: true},
			"p: 2 deleted, 3 keep (2 volume snapshots deleted) over 2 servers (1 gone or no longer selected) [dry run: nothing changed]"},
		{scheduler.PruneReport{Policy: "p"}, "p: no images over 0 servers"},
	} {
		if got := pruneSummary(&tt.rep); got != tt.want {
			t.Errorf("pruneSummary:\n got %q\nwant %q", got, tt.want)
		}
	}
}

// TestPruneCommandDryRunShowsProtected protects in Glance an image retention would
// delete: `prune --dry-run` must show it as the real prune treats it, kept
// (protected), not as delete.
func TestPruneCommandDryRunShowsProtected(t *testing.T) {
	env := newRetentionEnv(t)
	var old simcloud.ImageState
	for _, im := range env.sim.Images() {
		if strings.HasPrefix(im.Name, "app-1119") {
			old = im
		}
	}
	if old.ID == "" || !env.sim.SetImageProtected(old.ID, true) {
		t.Fatalf("cannot protect app-1119 in %v", env.sim.Images())
	}
	line := regexp.MustCompile(`(?m)^app-1119\s+app\s+\d+d\d+h\s+keep \(protected\)\s+no rule keeps it; kept: image is protected in Glance`)
	for _, args := range [][]string{{"--dry-run"}, {}} {
		code, out, errOut := env.cli(t, append([]string{"prune", "--config", env.config}, args...)...)
		if code != 0 {
			t.Fatalf("prune %v: exit %d\n%s\n%s", args, code, out, errOut)
		}
		if !line.MatchString(out) {
			t.Errorf("prune %v does not show app-1119 kept (protected):\n%s", args, out)
		}
	}
	if _, ok := env.sim.Image(old.ID); !ok {
		t.Fatal("protected image deleted")
	}
}
