package main

import (
	"context"
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/imagekeeper/imagekeeper/cloud/simcloud"
	"github.com/imagekeeper/imagekeeper/store"
	"github.com/imagekeeper/imagekeeper/store/storetest"
)

// TestRecoverRebuildsALostLineage makes images, deletes lineage.db, and rebuilds it
// with recover --owner: every stamped image gets its row back (good, adopted, with
// its volume snapshots, an image_recovered event, the real request time), the
// database takes the old owner id, and reconcile then sees no unknown images. It
// refuses beside the daemon and into a non-empty database without --force. On the
// old code a fresh database got a new owner id and the images were orphaned.
func TestRecoverRebuildsALostLineage(t *testing.T) {
	env := newLineageEnv(t)
	tags := []string{"backup=daily"}
	web := env.sim.AddServer(simcloud.ServerSpec{Name: "web-1", Tags: tags})
	db := env.sim.AddServer(simcloud.ServerSpec{Name: "db-1", Tags: tags, Volumes: 2})
	if code, out, errOut := env.cli(t, "run", "--config", env.config, "--policy", "web"); code != 0 {
		t.Fatalf("run: exit %d\n%s\n%s", code, out, errOut)
	}
	ctx := context.Background()
	st := storetest.MustOpenAt(t, env.state, nil)
	owner := st.Owner()
	before, err := st.Images(ctx, store.ImageFilter{})
	st.Close()
	if err != nil || len(before) != 2 {
		t.Fatalf("images before the loss: %d, %v", len(before), err)
	}
	requested := map[string]time.Time{}
	for _, im := range before {
		requested[im.ImageID] = im.RequestedAt
	}

	for _, suffix := range []string{"", "-wal", "-shm"} {
		if err := os.Remove(env.state + suffix); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
	}
	if code, _, errOut := env.cli(t, "recover", "--config", env.config); code != exitUsage || !strings.Contains(errOut, "--owner is required") {
		t.Fatalf("recover without --owner: exit %d %q", code, errOut)
	}
	lock, err := acquireLock(env.state)
	if err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := env.cli(t, "recover", "--config", env.config, "--owner", owner); code != exitFailure || !strings.Contains(errOut, "stop it first") {
		t.Fatalf("recover beside a daemon: exit %d %q", code, errOut)
	}
	lock.Release()

	code, out, errOut := env.cli(t, "recover", "--config", env.config, "--owner", owner)
	if code != 0 {
		t.Fatalf("recover: exit %d\n%s\n%s", code, out, errOut)
	}
	for _, re := range []string{
		`(?m)^owner ` + owner + `: 2 images stamped in the cloud, 2 recovered, 0 skipped$`,
		`(?m)^recovered \S+: policy web, server ` + web + `, slot 2026-11-24T18:30:00Z: good$`,
		`(?m)^recovered \S+: policy web, server ` + db + `, slot 2026-11-24T18:30:00Z: good$`,
		`(?m)^lineage rows by state: good 2, failed 0, creating 0; the daemon goes on as owner ` + owner + `$`,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("recover output does not match %s:\n%s", re, out)
		}
	}

	st = storetest.MustOpenAt(t, env.state, nil)
	if st.Owner() != owner {
		t.Errorf("owner after recovery %s, want %s", st.Owner(), owner)
	}
	after, err := st.Images(ctx, store.ImageFilter{})
	if err != nil || len(after) != 2 {
		t.Fatalf("images after recovery: %d, %v", len(after), err)
	}
	for _, im := range after {
		// The request time is Glance's creation time: within moments of the real one,
		// not the time of the recovery, so that recovery points keep their age.
		if im.State != store.ImageGood || !im.Adopted || im.Owner != owner ||
			im.RequestedAt.Sub(requested[im.ImageID]).Abs() > 2*time.Second {
			t.Errorf("recovered row %+v (requested before: %v)", im, requested[im.ImageID])
		}
		snaps, _ := st.Snapshots(ctx, im.Row)
		if want := map[string]int{web: 0, db: 2}[im.ServerID]; len(snaps) != want {
			t.Errorf("server %s: %d snapshots recorded, want %d", im.ServerID, len(snaps), want)
		}
	}
	evs, err := st.Events(ctx, store.EventFilter{Kind: store.EventImageRecovered})
	if err != nil || len(evs) != 2 || !strings.Contains(evs[0].Message, "recovered from the cloud's stamp") {
		t.Errorf("recovered events: %+v %v", evs, err)
	}
	st.Close()

	code, out, _ = env.cli(t, "reconcile", "--config", env.config, "-o", "json")
	var rec reconcileJSON
	if code != 0 || json.Unmarshal([]byte(out), &rec) != nil || rec.CloudImages != 2 || rec.Counts["stamped_unknown"] != 0 {
		t.Errorf("reconcile after recovery: exit %d\n%s", code, out)
	}

	if code, _, errOut := env.cli(t, "recover", "--config", env.config, "--owner", owner); code != exitFailure || !strings.Contains(errOut, "is not empty") {
		t.Fatalf("recover into a non-empty lineage: exit %d %q", code, errOut)
	}
	code, out, errOut = env.cli(t, "recover", "--config", env.config, "--owner", owner, "--force")
	if code != 0 || !strings.Contains(out, "0 recovered, 2 skipped") || strings.Count(out, "already in the lineage") != 2 {
		t.Fatalf("recover --force: exit %d\n%s\n%s", code, out, errOut)
	}
}

// TestDaemonNoticesALostLineage runs the daemon, loses lineage.db and starts it
// again: the new database has a new owner id, and the periodic reconcile now says
// that images of its policies carry the old one, names it with the recover command,
// and exports imagekeeper_foreign_stamped_images. The old daemon said nothing.
func TestDaemonNoticesALostLineage(t *testing.T) {
	e := newEnv(t, simcloud.Options{})
	e.sim.AddServer(simcloud.ServerSpec{Name: "a-1", Tags: []string{"a"}})
	e.writeConfig(policyYAML("a", "@every 1s", "a", ""))
	r := e.start()
	eventually(t, "a good image", 20*time.Second, func() bool { return len(simImagesOf(e.sim, "a")) > 0 })
	old := r.st.Owner()
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	for _, suffix := range []string{"", "-wal", "-shm"} {
		if err := os.Remove(e.state + suffix); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
	}
	e.writeConfig(policyYAML("a", "@every 1h", "a", ""))
	r = e.start(func(d *Daemon) { d.ReconcileInterval = 100 * time.Millisecond })
	if r.st.Owner() == old {
		t.Fatal("a fresh database kept the old owner id; the test proves nothing")
	}
	eventually(t, "the warning about the old owner", 30*time.Second, func() bool {
		return strings.Contains(r.logs.String(), "imagekeeper recover --owner "+old)
	})
	if v := metricValue(t, r.addr, "imagekeeper_foreign_stamped_images"); v == "" || v == "0" {
		t.Fatalf("imagekeeper_foreign_stamped_images = %q, want the old images", v)
	}
}
