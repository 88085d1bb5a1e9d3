package main

import (
	"encoding/json"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/imagekeeper/imagekeeper/cloud/simcloud"
	"github.com/imagekeeper/imagekeeper/scheduler"
)

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
