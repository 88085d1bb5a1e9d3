package main

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"github.com/imagekeeper/imagekeeper/cloud/simcloud"
)

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
