package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/imagekeeper/imagekeeper/cloud/simcloud"
	"github.com/imagekeeper/imagekeeper/store"
)

// controlEnv is a daemon serving a lineage, three servers its one policy "web"
// selects (web-2 volume-backed) and a schedule that does not fire during the test:
// every image is made by a command sent through the control socket.
func controlEnv(t *testing.T) (*env, *running) {
	t.Helper()
	e := newEnv(t, simcloud.Options{})
	for _, spec := range []simcloud.ServerSpec{
		{Name: "web-1", Tags: []string{"backup=daily"}},
		{Name: "web-2", Tags: []string{"backup=daily"}, Volumes: 1},
		{Name: "web-3", Tags: []string{"backup=daily"}},
		{Name: "other", Tags: []string{"backup=never"}},
	} {
		e.sim.AddServer(spec)
	}
	e.writeConfig(policyYAML("web", "0 0 1 1 *", "backup=daily", ""))
	// The CLI's own cloud connection (direct mode) reads this clouds.yaml.
	t.Setenv("OS_CLIENT_CONFIG_FILE", e.clouds)
	r := e.start(func(d *Daemon) { d.ProgressEvery = 50 * time.Millisecond })
	return e, r
}

// TestControlSocketRunsCommandsInTheDaemon runs run, status, reconcile and prune
// while a daemon holds the lineage: each goes through the socket (a direct run
// would fail on the database lock), progress streams back, and the daemon's locks
// and config are used.
func TestControlSocketRunsCommandsInTheDaemon(t *testing.T) {
	e, r := controlEnv(t)
	sock := controlSocketPath(e.state)
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o660 {
		t.Fatalf("control socket %s: %v, mode %v; want a socket with mode 0660", sock, err, fi.Mode())
	}

	// run --server by name: one image, made by the daemon, with progress lines and
	// a heartbeat while the image is saving.
	code, stdout, stderr := cli(t, "run", "--config", e.config, "--policy", "web", "--server", "web-2", "--no-prune")
	if code != exitOK {
		t.Fatalf("run through the socket: exit %d\nstdout:\n%s\nstderr:\n%s\ndaemon log:\n%s", code, stdout, stderr, r.logs)
	}
	for _, want := range []string{"web: slot ", ": 1 server selected\n", "1/1 web-2: image ", " good", " elapsed, 0 servers done; 1 image saving",
		"web: slot ", " ran: 1 selected, 1 good, 0 failed, 0 skipped"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("run output lacks %q:\n%s", want, stdout)
		}
	}
	if strings.Contains(stdout, "retention:") {
		t.Errorf("run --no-prune applied retention:\n%s", stdout)
	}
	if n := len(e.sim.Images()); n != 1 {
		t.Errorf("run --server web-2 made %d images, want 1", n)
	}
	logs := r.logs.String()
	if !strings.Contains(logs, "control socket command") {
		t.Errorf("the daemon did not log the command:\n%s", logs)
	}
	// Log lines name the server and the image beside their ids, and the config hash
	// is config_version, never version.
	if !strings.Contains(logs, "server_name=web-2") || !strings.Contains(logs, "image_name=web-2-web-") ||
		!strings.Contains(logs, "config_version=") || regexp.MustCompile(`(^|\s)version=`).MatchString(logs) {
		t.Errorf("daemon log lacks server_name/image_name/config_version, or logs a bare version:\n%s", logs)
	}
	// why names the volume of the snapshot, never "of volume -".
	web2, err := r.st.Images(context.Background(), store.ImageFilter{Policy: "web"})
	if err != nil || len(web2) != 1 {
		t.Fatalf("lineage: %v %v", web2, err)
	}
	code, stdout, _ = cli(t, "why", web2[0].ImageID, "--config", e.config)
	if code != exitOK || strings.Contains(stdout, "of volume -") || !strings.Contains(stdout, " of volume ") {
		t.Errorf("why of a volume-backed image: exit %d\n%s", code, stdout)
	}

	// Errors come back with their exit code.
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"run", "--policy", "web", "--server", "other"}, `imagekeeper run: --server other: policy web selects no server of that name or id (3 servers selected)`},
		{[]string{"run", "--policy", "nope"}, `imagekeeper run: no policy "nope" in ` + e.config + ` (policies: web)`},
		{[]string{"run", "--policy", "web", "--slot", "2026-01-01T00:30:00Z"}, "imagekeeper run: --slot 2026-01-01T00:30:00Z is not a slot of web (0 0 1 1 * in UTC) nor an earlier manual run (the slot before it is 2026-01-01T00:00:00Z)"},
	} {
		code, stdout, stderr := cli(t, append(tt.args, "--config", e.config)...)
		if code != exitUsage || stdout != "" || strings.TrimSpace(stderr) != tt.want {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want 2 and %q", tt.args, code, stdout, stderr, tt.want)
		}
	}

	// status comes from the daemon: its version and config version.
	code, stdout, stderr = cli(t, "status", "--config", e.config, "-o", "json")
	if code != exitOK {
		t.Fatalf("status: exit %d\n%s%s", code, stdout, stderr)
	}
	var st statusJSON
	if err := json.Unmarshal([]byte(stdout), &st); err != nil {
		t.Fatalf("status -o json: %v\n%s", err, stdout)
	}
	cfg := r.d.cfgs.Load().Current()
	if st.Daemon == nil || st.Daemon.Version != buildVersion() || st.Daemon.ConfigVersion != cfg.Version || st.ConfigVersion != cfg.Version ||
		st.Owner != r.st.Owner() || st.Lineage != e.state {
		t.Errorf("status: %+v daemon %+v; want the daemon's version %s, config version %s, owner %s", st, st.Daemon, buildVersion(), cfg.Version, r.st.Owner())
	}
	if len(st.Policies) != 1 || st.Policies[0].Policy != "web" || st.Policies[0].LastOutcome != "ran" || st.Policies[0].NextSlot == nil ||
		st.Policies[0].LastTrigger != "manual" {
		t.Errorf("status policies: %+v", st.Policies)
	}
	code, stdout, _ = cli(t, "status", "--config", e.config)
	if code != exitOK || !strings.Contains(stdout, "daemon:  running, version "+buildVersion()) || !strings.Contains(stdout, "ran (manual)") {
		t.Errorf("status table: exit %d\n%s", code, stdout)
	}

	// reconcile without --fix reports and changes nothing, with --fix acts.
	ims, err := r.st.Images(context.Background(), store.ImageFilter{Policy: "web"})
	if err != nil || len(ims) != 1 {
		t.Fatalf("lineage: %v %v", ims, err)
	}
	e.sim.DeleteImageDirect(ims[0].ImageID)
	code, stdout, stderr = cli(t, "reconcile", "--config", e.config)
	if code != exitOK || !strings.Contains(stdout, "would mark failed") || !strings.Contains(stdout, "reconcile (report only, nothing changed; --fix to act)") {
		t.Errorf("reconcile: exit %d\n%s%s", code, stdout, stderr)
	}
	if im, _ := r.st.Image(context.Background(), ims[0].Row); im.State != store.ImageGood {
		t.Errorf("reconcile without --fix changed the row to %s", im.State)
	}
	code, stdout, stderr = cli(t, "reconcile", "--config", e.config, "--fix")
	if code != exitOK || !strings.Contains(stdout, "marked failed") {
		t.Errorf("reconcile --fix: exit %d\n%s%s", code, stdout, stderr)
	}
	// web-2 is volume-backed: with its image gone, --fix also deletes the snapshot
	// left behind, and the row ends deleted.
	if im, _ := r.st.Image(context.Background(), ims[0].Row); im.State != store.ImageDeleted {
		t.Errorf("reconcile --fix left the row %s, want deleted", im.State)
	}

	code, stdout, stderr = cli(t, "prune", "--config", e.config, "--dry-run", "-o", "json")
	if code != exitOK || !strings.Contains(stdout, `"dry_run": true`) {
		t.Errorf("prune --dry-run: exit %d\n%s%s", code, stdout, stderr)
	}
	code, stdout, stderr = cli(t, "prune", "--config", e.config, "--policy", "web")
	if code != exitOK || !strings.Contains(stdout, "web:") {
		t.Errorf("prune: exit %d\n%s%s", code, stdout, stderr)
	}

	// --slot re-runs a slot of the schedule (one the daemon never ran here): the
	// images are stamped with that slot, and history shows it run by hand.
	code, stdout, stderr = cli(t, "run", "--config", e.config, "--policy", "web", "--slot", "2026-01-01T00:00:00Z", "--server", "web-3", "--quiet")
	if code != exitOK || !strings.Contains(stdout, "web: slot 2026-01-01T00:00:00Z ran: 1 selected, 1 good") {
		t.Errorf("run --slot: exit %d\n%s%s", code, stdout, stderr)
	}
	code, stdout, _ = cli(t, "history", "--config", e.config, "--policy", "web", "-o", "json")
	if code != exitOK || !strings.Contains(stdout, `"slot": "2026-01-01T00:00:00Z"`) || !strings.Contains(stdout, `"trigger": "manual"`) {
		t.Errorf("history after run --slot: exit %d\n%s", code, stdout)
	}

	// Once the daemon stops, its socket is gone and the same commands work directly.
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("control socket still there after the daemon stopped: %v", err)
	}
	code, stdout, stderr = cli(t, "status", "--config", e.config)
	if code != exitOK || !strings.Contains(stdout, "daemon:  not running (no daemon listens on "+sock+")") {
		t.Errorf("status without a daemon: exit %d\n%s%s", code, stdout, stderr)
	}
	code, stdout, stderr = cli(t, "run", "--config", e.config, "--policy", "web", "--server", "web-1", "--quiet")
	if code != exitOK || !strings.Contains(stdout, "1 selected, 1 good") {
		t.Errorf("run without a daemon: exit %d\n%s%s", code, stdout, stderr)
	}
}

// TestReadOnlyCommandsWithoutPolicyFile checks that images, history, why and
// status read a lineage with --state and no policy file, and with a policy file
// that no longer validates, and that an unknown --policy is an error.
func TestReadOnlyCommandsWithoutPolicyFile(t *testing.T) {
	e, r := controlEnv(t)
	if code, stdout, stderr := cli(t, "run", "--config", e.config, "--policy", "web", "--quiet"); code != exitOK {
		t.Fatalf("run: exit %d\n%s%s", code, stdout, stderr)
	}
	ims, err := r.st.Images(context.Background(), store.ImageFilter{Policy: "web"})
	if err != nil || len(ims) != 3 {
		t.Fatalf("lineage: %d images, %v", len(ims), err)
	}
	var web1 store.Image
	for _, im := range ims {
		if im.ServerName == "web-1" {
			web1 = im
		}
	}
	missing := filepath.Join(t.TempDir(), "no-policy-file.yaml")
	check := func(what string, args []string, wantOut string) {
		t.Helper()
		code, stdout, stderr := cli(t, args...)
		if code != exitOK || !strings.Contains(stdout, wantOut) {
			t.Errorf("%s: %q: exit %d, want 0 and %q in\n%s\nstderr: %s", what, args, code, wantOut, stdout, stderr)
		}
	}
	for _, mode := range []string{"daemon running", "daemon stopped"} {
		if mode == "daemon stopped" {
			if err := r.stop(t); err != nil {
				t.Fatal(err)
			}
		}
		state := []string{"--state", e.state, "--config", missing}
		check(mode, append([]string{"images"}, state...), web1.ImageID)
		check(mode, append([]string{"images", "--server", "web-1"}, state...), web1.ImageID)
		check(mode, append([]string{"images", "--server", web1.ServerID}, state...), web1.ImageID)
		check(mode, append([]string{"history"}, state...), "web ")
		check(mode, append([]string{"why", web1.ImageID}, state...), "web-1")
		check(mode, append([]string{"status"}, state...), "web ")
		code, stdout, _ := cli(t, append([]string{"images", "--server", "web-1", "-o", "json"}, state...)...)
		if code != exitOK || strings.Count(stdout, `"image_id"`) != 1 {
			t.Errorf("%s: images --server web-1 -o json: exit %d, want exactly web-1's image:\n%s", mode, code, stdout)
		}
		code, _, stderr := cli(t, append([]string{"images", "--policy", "nope"}, state...)...)
		if code != exitUsage || !strings.Contains(stderr, `no policy "nope" in the lineage `+e.state+` (policies: web)`) {
			t.Errorf("%s: images --policy nope: exit %d, stderr %q", mode, code, stderr)
		}
	}

	// A policy file that no longer validates (what ConfigReloadFailed reports): the
	// read-only commands still read the lineage it names, and say so.
	cfg, err := os.ReadFile(e.config)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.config, []byte(strings.Replace(string(cfg), "keep_last: 100", "keep_last: many", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"images"}, {"history"}, {"status"}, {"why", web1.ImageID}} {
		code, stdout, stderr := cli(t, append(args, "--config", e.config)...)
		if code != exitOK || stdout == "" || !strings.Contains(stderr, "warning: "+e.config+" does not validate") {
			t.Errorf("%s with an invalid policy file: exit %d, stdout %q, stderr %q", args[0], code, stdout, stderr)
		}
	}
	if code, _, stderr := cli(t, "images", "--config", e.config, "--policy", "nope"); code != exitUsage {
		t.Errorf("images --policy nope with an invalid policy file: exit %d, stderr %q", code, stderr)
	}
}
