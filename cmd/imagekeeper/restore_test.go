package main

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/imagekeeper/imagekeeper/cloud/simcloud"
)

// restoreEnv is the lineage commands' scene with servers whose images are in the
// lineage: web-1 (image-backed), db-1 (two volumes) and web-2, whose image failed.
type restoreEnv struct {
	*env
	images map[string]imageJSON // by server name
}

func newRestoreEnv(t *testing.T) *restoreEnv {
	t.Helper()
	e := newEnv(t, simcloud.Options{Seed: 7, ImageBuildTime: 80 * time.Millisecond, SnapshotBuildTime: 50 * time.Millisecond,
		SnapshotDeleteTime: simcloud.DefaultSnapshotDeleteTime, BootTime: 150 * time.Millisecond}).forCommands()
	writeFile(t, e.config, fmt.Sprintf(lineageCLIConfig, e.state))
	e.now, e.pollInterval = lineageNow, 20*time.Millisecond
	tags := []string{"backup=daily"}
	e.sim.AddServer(simcloud.ServerSpec{Name: "web-1", Tags: tags, AZ: "az-1"})
	e.sim.AddServer(simcloud.ServerSpec{Name: "db-1", Tags: tags, Volumes: 2})
	web2 := e.sim.AddServer(simcloud.ServerSpec{Name: "web-2", Tags: tags})
	e.sim.FailNextSnapshot(web2)
	if code, out, errOut := e.cli(t, "run", "--config", e.config, "--policy", "web"); code != 1 && code != 0 {
		t.Fatalf("run: exit %d\n%s\n%s", code, out, errOut)
	}
	code, out, errOut := e.cli(t, "images", "--config", e.config, "-o", "json")
	if code != 0 {
		t.Fatalf("images: exit %d\n%s", code, errOut)
	}
	var list []imageJSON
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("images -o json: %v\n%s", err, out)
	}
	re := &restoreEnv{env: e, images: map[string]imageJSON{}}
	for _, im := range list {
		re.images[im.ServerName] = im
	}
	if re.images["web-1"].State != "good" || re.images["db-1"].State != "good" || re.images["web-2"].State != "failed" {
		t.Fatalf("lineage after the run: %+v", list)
	}
	return re
}

// TestRestoreBootsBothKinds restores an image-backed and a volume-backed image
// with --wait, as a user would, and checks what the cloud and the lineage hold.
func TestRestoreBootsBothKinds(t *testing.T) {
	e := newRestoreEnv(t)
	web := e.images["web-1"]
	code, out, errOut := e.cli(t, "restore", web.ImageID, "--name", "web-1-restored", "--wait", "--config", e.config)
	if code != 0 {
		t.Fatalf("restore: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	for _, re := range []string{
		`(?m)^restoring image ` + web.ImageID + ` \(image-backed, policy web, server web-1\) as "web-1-restored": flavor 1, availability zone az-1, network auto$`,
		`(?m)^server [0-9a-f-]{36} created$`,
		`(?m)^  BUILD \(spawning\)$`,
		`(?m)^server [0-9a-f-]{36} is ACTIVE$`,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("restore output does not match %s:\n%s", re, out)
		}
	}
	s := e.serverNamed(t, "web-1-restored")
	if s.Status != "ACTIVE" || s.ImageRef != web.ImageID || s.AZ != "az-1" || s.Metadata[restoreMetadataKey] != web.ImageID {
		t.Errorf("restored server = %+v", s)
	}
	code, out, _ = e.cli(t, "why", web.ImageID, "--config", e.config)
	if code != 0 || !regexp.MustCompile(`restored\s.*restored as server `+s.ID).MatchString(out) {
		t.Errorf("why does not show the restored event with the new server id %s:\n%s", s.ID, out)
	}

	db := e.images["db-1"]
	code, out, errOut = e.cli(t, "restore", db.ImageID, "--name", "db-1-restored", "--no-network", "--flavor", "m1.small", "--wait", "-o", "json", "--config", e.config)
	if code != 0 {
		t.Fatalf("restore db: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	var got restoreJSON
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("restore -o json: %v\n%s", err, out)
	}
	if got.Status != "ACTIVE" || got.Network != "none" || got.Flavor != "m1.small" {
		t.Errorf("restore -o json = %+v", got)
	}
	vols := 0
	for _, v := range e.sim.Volumes() {
		if v.ServerID == got.ServerID && v.Status == "in-use" {
			vols++
		}
	}
	if vols != 2 {
		t.Errorf("the restored db server has %d volumes made from the snapshots, want 2: %+v", vols, e.sim.Volumes())
	}
}

// TestRestoreRefusals: images that are not good, unknown images, a missing
// original server without --flavor, quota errors in words, and Nova's fault of an
// ERROR boot.
func TestRestoreRefusals(t *testing.T) {
	e := newRestoreEnv(t)
	web, failed := e.images["web-1"], e.images["web-2"]
	for _, tc := range []struct {
		name  string
		setup func()
		args  []string
		code  int
		want  string
	}{
		{"failed image", nil, []string{failed.ImageID, "--name", "x"}, 1, "is not good in the lineage (failed: image " + failed.ImageID + " vanished while waiting (Glance 404): Nova deletes the image when the snapshot fails): it may not boot; --force to try anyway"},
		{"unknown image", nil, []string{"00000000-0000-4000-8000-000000000000", "--name", "x"}, 1, "is not in the lineage"},
		{"no name", nil, []string{web.ImageID}, 2, "--name is required"},
		{"both network flags", nil, []string{web.ImageID, "--name", "x", "--network", "n", "--no-network"}, 2, "exclude each other"},
		{"quota", func() { e.sim.SetInstanceQuota(1) }, []string{web.ImageID, "--name", "x"}, 1,
			"the project's quota refuses another server: Quota exceeded for instances: Requested 1, but already used 3 of 1 instances"},
		{"error boot", func() {
			e.sim.SetInstanceQuota(0)
			e.sim.FailNextBoot("No valid host was found. There are not enough hosts available.")
		},
			[]string{web.ImageID, "--name", "doomed", "--wait"}, 1, "went to ERROR: No valid host was found. There are not enough hosts available."},
		{"network by name", nil, []string{web.ImageID, "--name", "x", "--network", "drill-net"}, 1,
			"Nova refused the boot request: Bad networks format: network uuid is not in proper format (drill-net)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.setup != nil {
				tc.setup()
			}
			code, out, errOut := e.cli(t, append([]string{"restore", "--config", e.config}, tc.args...)...)
			if code != tc.code || !strings.Contains(errOut, tc.want) {
				t.Errorf("exit %d, want %d; stderr does not say %q:\n%s\nstdout:\n%s", code, tc.code, tc.want, errOut, out)
			}
		})
	}
	// The original server is gone: the flavor must be given, the zone is the
	// lineage's.
	e.sim.RemoveServer(web.ServerID)
	code, _, errOut := e.cli(t, "restore", web.ImageID, "--name", "y", "--config", e.config)
	if code != 1 || !strings.Contains(errOut, "no longer exists: give --flavor") {
		t.Errorf("without the original server: exit %d\n%s", code, errOut)
	}
	code, out, errOut := e.cli(t, "restore", web.ImageID, "--name", "y", "--flavor", "2", "--config", e.config)
	if code != 0 || !strings.Contains(out, "availability zone az-1") {
		t.Errorf("with --flavor: exit %d\n%s\n%s", code, out, errOut)
	}
	// --force boots a failed image's id anyway; Nova then refuses it (it is gone).
	code, _, errOut = e.cli(t, "restore", failed.ImageID, "--name", "z", "--force", "--config", e.config)
	if code != 1 || !strings.Contains(errOut, "could not be found") {
		t.Errorf("--force of a failed image: exit %d\n%s", code, errOut)
	}
}
