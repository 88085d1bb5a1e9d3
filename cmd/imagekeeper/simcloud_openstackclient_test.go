package main

import (
	"bufio"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestOpenstackClientAgainstSimcloud drives `imagekeeper simcloud` with Debian's
// python3-openstackclient: a real OpenStack client passing against the simulator
// is how we know it speaks OpenStack and not only our own dialect. Each CLI call
// costs about 2.5 s of CPU, so the calls are few and the checks in between read
// the simulator's /_sim/ state instead.
func TestOpenstackClientAgainstSimcloud(t *testing.T) {
	osc := requirePeer(t, "openstack", "python3-openstackclient")
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go tool: %v", err)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "imagekeeper")
	if out, err := exec.Command(goTool, "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	const servers = 6
	cloudsYAML := filepath.Join(dir, "clouds.yaml")
	sim := exec.Command(bin, "simcloud", "--listen", "127.0.0.1:0", "--servers", "6",
		"--clouds-yaml", cloudsYAML, "--seed", "7", "--image-build-time", "1s", "--snapshot-build-time", "300ms")
	stdout, err := sim.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	sim.Stderr = &stderr
	if err := sim.Start(); err != nil {
		t.Fatalf("start simcloud: %v", err)
	}
	exited := make(chan error, 1)
	lines := bufio.NewScanner(stdout)
	if !lines.Scan() {
		_ = sim.Process.Kill()
		t.Fatalf("simcloud printed nothing; stderr:\n%s", stderr.String())
	}
	url, ok := strings.CutPrefix(lines.Text(), "simcloud listening on ")
	if !ok {
		_ = sim.Process.Kill()
		t.Fatalf("first line %q", lines.Text())
	}
	go func() {
		for lines.Scan() {
		}
		exited <- sim.Wait()
	}()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		_ = sim.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("simcloud did not exit cleanly on SIGTERM: %v\n%s", err, stderr.String())
			}
		case <-time.After(10 * time.Second):
			_ = sim.Process.Kill()
			t.Errorf("simcloud ignored SIGTERM")
		}
	}
	t.Cleanup(stop)

	env := append(os.Environ(), "OS_CLIENT_CONFIG_FILE="+cloudsYAML, "OS_CLOUD=simcloud", "HOME="+dir,
		"XDG_CACHE_HOME="+filepath.Join(dir, "cache"))
	run := func(v any, args ...string) {
		t.Helper()
		cmd := exec.Command(osc, args...)
		cmd.Env = env
		var errb strings.Builder
		cmd.Stderr = &errb
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("openstack %s: %v\nstderr:\n%s\nsimcloud:\n%s", strings.Join(args, " "), err, errb.String(), stderr.String())
		}
		if v != nil {
			if err := json.Unmarshal(out, v); err != nil {
				t.Fatalf("openstack %s: output is not JSON: %v\n%s", strings.Join(args, " "), err, out)
			}
		}
	}
	state := func() (st struct {
		Servers   []struct{ ID, Name string }
		Images    []struct{ ID, Name string }
		Snapshots []struct{ ID, Name, Status string }
	}) {
		t.Helper()
		resp, err := http.Get(url + "/_sim/state")
		if err != nil {
			t.Fatalf("simcloud state: %v", err)
		}
		defer resp.Body.Close()
		if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
			t.Fatalf("simcloud state: %v", err)
		}
		return st
	}
	serverID := map[string]string{}
	for _, s := range state().Servers {
		serverID[s.Name] = s.ID
	}

	// server list --tags: the fleet's backup=daily servers, filtered by Nova (>= 2.26).
	var listed []struct{ ID, Name, Status string }
	run(&listed, "--os-compute-api-version", "2.60", "server", "list", "--tags", "backup=daily", "-f", "json")
	var want, got []string
	for _, spec := range simcloudFleet(servers) {
		if slices.Contains(spec.Tags, "backup=daily") {
			want = append(want, spec.Name)
		}
	}
	for _, s := range listed {
		got = append(got, s.Name)
		if serverID[s.Name] != s.ID {
			t.Errorf("server list: %s has id %s, simulator says %s", s.Name, s.ID, serverID[s.Name])
		}
	}
	slices.Sort(want)
	slices.Sort(got)
	if len(want) == 0 || len(want) == servers || !slices.Equal(got, want) {
		t.Errorf("server list --tags backup=daily = %v, want %v", got, want)
	}

	type image struct {
		ID, Name, Status string
		Size             *int64
		Properties       map[string]any
	}
	// server image create on an image-backed server, waiting for active.
	var img image
	run(&img, "--os-compute-api-version", "2.60", "server", "image", "create", "--name", "ik-web",
		"--property", "k=v", "--wait", "-f", "json", "web-01")
	if img.Status != "active" || img.Name != "ik-web" || img.Properties["k"] != "v" ||
		img.Properties["instance_uuid"] != serverID["web-01"] || img.Properties["image_type"] != "snapshot" {
		t.Errorf("server image create (image-backed): %+v", img)
	}
	// ... and on a volume-backed server: a 0-byte image naming its Cinder snapshots.
	var vimg image
	run(&vimg, "--os-compute-api-version", "2.60", "server", "image", "create", "--name", "ik-db",
		"--property", "k=v", "-f", "json", "db-02")
	bdm, _ := vimg.Properties["block_device_mapping"].(string)
	var mapping []struct {
		SnapshotID string `json:"snapshot_id"`
	}
	if err := json.Unmarshal([]byte(bdm), &mapping); err != nil || len(mapping) != 2 || vimg.Size == nil || *vimg.Size != 0 {
		t.Fatalf("volume-backed image: %+v (bdm %v)", vimg, err)
	}

	var shown image
	run(&shown, "image", "show", "-f", "json", img.ID)
	if shown.ID != img.ID || shown.Status != "active" || shown.Properties["k"] != "v" {
		t.Errorf("image show: %+v", shown)
	}

	var byProp []struct{ ID, Name string }
	run(&byProp, "image", "list", "--property", "k=v", "-f", "json")
	var names []string
	for _, im := range byProp {
		names = append(names, im.Name)
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"ik-db", "ik-web"}) {
		t.Errorf("image list --property k=v = %v", names)
	}

	// Restores: openstack server create --image boots both kinds with imageRef (what
	// imagekeeper restore sends); the volume-backed one gets a volume per snapshot,
	// which outlives the server (delete_on_termination false) until deleted.
	runOut := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(osc, args...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("openstack %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	type booted struct{ ID, Status string }
	var rweb, rdb booted
	run(&rweb, "--os-compute-api-version", "2.60", "server", "create", "--image", img.ID, "--flavor", "m1.small",
		"--nic", "none", "--wait", "-f", "json", "restored-web")
	run(&rdb, "--os-compute-api-version", "2.60", "server", "create", "--image", vimg.ID, "--flavor", "m1.tiny",
		"--nic", "none", "--wait", "-f", "json", "restored-db")
	if rweb.Status != "ACTIVE" || rdb.Status != "ACTIVE" {
		t.Errorf("server create --wait: %+v %+v, want both ACTIVE", rweb, rdb)
	}
	if out := runOut("--os-compute-api-version", "2.60", "console", "log", "show", "--lines", "1", "restored-web"); !strings.Contains(out, "login:") {
		t.Errorf("console log show: %q, want the login prompt", out)
	}
	type vol struct {
		ID          string
		Status      string
		Attachments []struct {
			ServerID string `json:"server_id"`
		} `json:"Attached to"`
	}
	var inUse []vol
	run(&inUse, "volume", "list", "--status", "in-use", "-f", "json")
	var restoredVols []string
	for _, v := range inUse {
		if len(v.Attachments) == 1 && v.Attachments[0].ServerID == rdb.ID {
			restoredVols = append(restoredVols, v.ID)
		}
	}
	if len(restoredVols) != 2 {
		t.Errorf("volume list: %d volumes attached to restored-db, want one per snapshot (2): %+v", len(restoredVols), inUse)
	}
	runOut("server", "delete", "--wait", "restored-db", "restored-web")
	var avail []vol
	run(&avail, "volume", "list", "--status", "available", "-f", "json")
	var left []string
	for _, v := range avail {
		left = append(left, v.ID)
	}
	slices.Sort(left)
	slices.Sort(restoredVols)
	if !slices.Equal(left, restoredVols) {
		t.Errorf("available volumes after server delete = %v, want the restored server's %v", left, restoredVols)
	}
	runOut(append([]string{"volume", "delete"}, left...)...)

	run(nil, "image", "delete", vimg.ID)
	for _, im := range state().Images {
		if im.ID == vimg.ID {
			t.Errorf("image delete: %s still in the simulator", vimg.ID)
		}
	}

	// The image is gone; its snapshots stay, as in a real cloud.
	var snaps []struct{ ID, Name, Status string }
	run(&snaps, "volume", "snapshot", "list", "-f", "json")
	var ours []string
	for _, s := range snaps {
		if s.Name == "snapshot for ik-db" {
			ours = append(ours, s.ID)
		}
	}
	wantSnaps := []string{mapping[0].SnapshotID, mapping[1].SnapshotID}
	slices.Sort(ours)
	slices.Sort(wantSnaps)
	if !slices.Equal(ours, wantSnaps) {
		t.Errorf("volume snapshot list: %+v, want the two of ik-db %v", snaps, wantSnaps)
	}

	run(nil, "volume", "snapshot", "delete", wantSnaps[0])
	for _, s := range state().Snapshots {
		if s.ID == wantSnaps[0] && s.Status != "deleting" {
			t.Errorf("volume snapshot delete: snapshot %s is %s", s.ID, s.Status)
		}
	}
	stop()
}
