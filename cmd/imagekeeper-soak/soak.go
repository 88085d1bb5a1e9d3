package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
)

// policyDef is one soak policy: what the config says and what the checks need.
type policyDef struct {
	Name    string
	Role    string
	Every   time.Duration
	MinKeep int
	YAML    string
}

// soakPolicies have sub-minute schedules, small retention and a wait_timeout short
// enough that stuck images fail within the soak.
var soakPolicies = []policyDef{
	{Name: "web", Role: "web", Every: 6 * time.Second, MinKeep: 1, YAML: `
  - name: web
    select: {tags: [soak, role=web], exclude_tags: [no-backup]}
    schedule: {cron: "@every 6s", catch_up: latest, max_lateness: 20s}
    image:
      name: '{{ .Server.Name }}-{{ .Slot.Format "150405" }}'
      metadata: {source: '{{ .Server.ID }}', az: '{{ .Server.AZ }}'}
      wait_timeout: 20s
    retention: {keep_last: 3, min_keep: 1, max_deletions_per_run: 20}
    verify: {cron: "@every 12s", sample: 2, flavor: m1.tiny, timeout: 15s, console_marker: "login:"}
`},
	{Name: "db", Role: "db", Every: 8 * time.Second, MinKeep: 2, YAML: `
  - name: db
    select: {tags: [soak, role=db]}
    schedule: {cron: "@every 8s", catch_up: latest, max_lateness: 20s}
    image:
      name: '{{ .Server.Name | slug | trunc 40 }}-{{ .Slot.Format "20060102-150405" }}'
      wait_timeout: 20s
      hooks:
        pre: {command: [HOOKDIR/hook.sh, pre], timeout: 5s, on_failure: continue}
        post: {command: [HOOKDIR/hook.sh, post], timeout: 5s}
    retention: {keep_last: 2, min_keep: 2, max_deletions_per_run: 20}
    verify: {cron: "@every 16s", flavor: m1.small, timeout: 15s}
`},
	{Name: "app", Role: "app", Every: 10 * time.Second, MinKeep: 1, YAML: `
  - name: app
    select: {tags: [soak, role=app]}
    schedule: {cron: "@every 10s", catch_up: none}
    image:
      name: 'app {{ .Server.Name }} {{ .Slot.Unix }}'
      metadata: {tier: app}
      wait_timeout: 20s
    retention: {keep_last: 1, keep_within: 15s, min_keep: 1, max_deletions_per_run: 10}
`},
}

// soak is one run of the soak.
type soak struct {
	opts  options
	began time.Time
	out   io.Writer
	log   io.Writer
	rng   *rand.Rand
	rmu   sync.Mutex

	bin, cfgPath, dbPath, listen string
	sim                          *simClient
	simProc                      *proc

	mu        sync.Mutex
	daemon    *proc
	starts    int
	kills     int
	selfExits int
	readyMax  time.Duration
	notReady  int
	faults    map[string]int
	seen      map[string]simImage // every image ever observed, by id
	servers   []simServer
	owner     string
	// decoys must survive: images and snapshots that are not ours, or that carry
	// our stamp without a lineage row (a snapshot of a server booted from our image).
	decoyImages, decoySnaps map[string]string
	protected               map[string]bool   // our images protected mid-run
	inUse                   map[string]bool   // our snapshots a volume was made from
	hollowed                map[string]string // our image -> its snapshot deleted behind our back
	daemonHelp              string
	converge                []string // what the convergence steps printed
}

func (s *soak) intn(n int) int {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	return s.rng.Intn(n)
}

func (s *soak) float() float64 {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	return s.rng.Float64()
}

// progress prints a phase change with the time since the soak began.
func (s *soak) progress(format string, args ...any) {
	fmt.Fprintf(s.out, "soak: +%s %s\n", time.Since(s.began).Round(time.Second), fmt.Sprintf(format, args...))
}

func (s *soak) logf(format string, args ...any) {
	if s.opts.Verbose {
		fmt.Fprintf(s.log, "%s soak: %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
	}
}

func (s *soak) run(ctx context.Context) (*result, error) {
	o := s.opts
	s.began = time.Now()
	s.rng = rand.New(rand.NewSource(o.Seed))
	s.faults = map[string]int{}
	s.seen = map[string]simImage{}
	s.decoyImages, s.decoySnaps = map[string]string{}, map[string]string{}
	s.protected, s.inUse = map[string]bool{}, map[string]bool{}
	s.hollowed = map[string]string{}
	fmt.Fprintf(s.out, "soak: mode=%s seed=%d servers=%d duration=%s kills=%d workdir=%s\n",
		o.Mode, o.Seed, o.Servers, o.Duration, o.Kills, o.Workdir)

	s.bin = o.Bin
	if s.bin == "" {
		b, err := buildBinary(ctx, o.Workdir)
		if err != nil {
			return nil, err
		}
		s.bin = b
	}
	sp, base, err := startSim(s.bin, o.Workdir, o.Seed)
	if err != nil {
		return nil, err
	}
	s.simProc = sp
	defer sp.kill()
	s.sim = newSimClient(base)
	if err := s.addFleet(ctx); err != nil {
		return nil, err
	}
	if s.listen, err = freePort(); err != nil {
		return nil, err
	}
	s.dbPath = filepath.Join(o.Workdir, "lineage.db")
	s.cfgPath = filepath.Join(o.Workdir, "soak.yaml")
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "# written by imagekeeper-soak (seed %d)\ncloud: simcloud\nstate: %s\nlisten: %s\n", o.Seed, s.dbPath, s.listen)
	cfg.WriteString("allow_sub_minute: true\nlimits: {concurrency: 8, requests_per_second: 200}\npolicies:")
	// The db policy's hooks append "pre|post SERVER SLOT RESULT" to hooks.log; the
	// check pairs them (every pre has exactly one post, kill -9 included).
	hookDir := filepath.Join(o.Workdir, "hooks")
	if err := os.MkdirAll(hookDir, 0o755); err != nil {
		return nil, err
	}
	script := "#!/bin/sh\nprintf '%s %s %s %s\\n' \"$1\" \"$IMAGEKEEPER_SERVER_ID\" \"$IMAGEKEEPER_SLOT\" \"${IMAGEKEEPER_RESULT:--}\" >> " +
		filepath.Join(hookDir, "hooks.log") + "\n"
	if err := os.WriteFile(filepath.Join(hookDir, "hook.sh"), []byte(script), 0o755); err != nil {
		return nil, err
	}
	for _, p := range soakPolicies {
		cfg.WriteString(strings.ReplaceAll(p.YAML, "HOOKDIR", hookDir))
	}
	if err := os.WriteFile(s.cfgPath, []byte(cfg.String()), 0o644); err != nil {
		return nil, err
	}
	if out, err := exec.CommandContext(ctx, s.bin, "validate", "--config", s.cfgPath).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("the soak's own policy file does not validate: %w\n%s", err, out)
	}

	if err := s.startDaemon(); err != nil {
		return nil, err
	}
	if err := s.readOwner(ctx); err != nil {
		return nil, err
	}
	if err := s.addDecoys(ctx); err != nil {
		return nil, err
	}

	s.progress("daemon ready; kill-and-fault phase of %s", o.Duration)
	phase, endPhase := context.WithTimeout(ctx, o.Duration)
	defer endPhase()
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); s.pollImages(phase) }()
	go func() { defer wg.Done(); s.injectFaults(phase) }()
	go func() { defer wg.Done(); s.arrangeMidRun(phase) }()
	s.killLoop(phase)
	wg.Wait()
	if ctx.Err() != nil {
		s.stopDaemon()
		return nil, ctx.Err()
	}

	// Convergence: no more faults or kills; the daemon gets Settle to finish waits,
	// time stuck images out and prune, then a graceful stop.
	if err := s.sim.clearFaults(ctx); err != nil {
		return nil, err
	}
	s.mu.Lock()
	dead := s.daemon == nil || s.daemon.exited()
	s.mu.Unlock()
	if dead {
		if err := s.startDaemon(); err != nil {
			return nil, err
		}
	}
	s.progress("faults cleared; settling %s", o.Settle)
	settle, endSettle := context.WithTimeout(ctx, o.Settle)
	s.pollImages(settle)
	endSettle()
	s.progress("stopping the daemon (SIGTERM)")
	drained, derr := s.stopDaemon()
	if !drained {
		s.converge = append(s.converge, fmt.Sprintf("daemon did not drain within 60s (killed): %v", derr))
	}
	s.progress("converging (reconcile, prune; %s at most)", o.Converge)
	cctx, cancel := context.WithTimeout(ctx, o.Converge)
	s.runConvergeCommands(cctx)
	cancel()
	s.progress("checking")
	return s.check(ctx)
}

// addFleet adds the soak's servers: per policy role, image- and volume-backed
// servers with hostile names, one in ERROR, one excluded by tag, and one booted
// from an image that carries a foreign imagekeeper stamp.
func (s *soak) addFleet(ctx context.Context) error {
	hostile := []string{`web "quoted" {{ .Server.ID }}`, "wéb ☃ 雪", "web\ttab", "  padded  ", "web/../../etc", "web-%s-%d"}
	for i := range s.opts.Servers {
		role := []string{"web", "web", "db", "db", "app"}[i%5]
		spec := map[string]any{
			"name": fmt.Sprintf("%s-%02d", role, i),
			"az":   []string{"az-1", "az-2"}[i%2],
			"tags": []string{"soak", "role=" + role},
		}
		switch role {
		case "db":
			spec["volumes"] = 1 + i%2
		case "app":
			if i%2 == 1 {
				spec["volumes"] = 1
			}
		}
		if i%7 == 3 {
			spec["name"] = hostile[(i/7)%len(hostile)] + fmt.Sprint(i)
		}
		switch i {
		case 5:
			spec["status"] = "ERROR"
		case 10:
			spec["tags"] = []string{"soak", "role=web", "no-backup"}
		case 15:
			spec["image_properties"] = map[string]string{"imagekeeper_owner": "someone-else",
				"imagekeeper_policy": "web", "imagekeeper_server": "inherited", "imagekeeper_slot": "2001-01-01T00:00:00Z"}
		}
		id, err := s.sim.addServer(ctx, spec)
		if err != nil {
			return err
		}
		tags, _ := spec["tags"].([]string)
		s.servers = append(s.servers, simServer{ID: id, Name: spec["name"].(string), Tags: tags})
	}
	return nil
}

// readOwner reads this installation's owner id from a copy of the lineage, so that
// decoys can carry our stamp.
func (s *soak) readOwner(ctx context.Context) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		l, err := readLineage(ctx, s.dbPath, filepath.Join(s.opts.Workdir, "owner-copy"), false)
		if err == nil && l.owner != "" {
			s.owner = l.owner
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("read the owner id from the lineage: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (s *soak) addDecoys(ctx context.Context) error {
	web := s.servers[0].ID
	stamp := func(owner, server, slot string) map[string]string {
		return map[string]string{"imagekeeper_owner": owner, "imagekeeper_policy": "web",
			"imagekeeper_server": server, "imagekeeper_slot": slot}
	}
	slot := time.Now().UTC().Add(-time.Hour).Truncate(6 * time.Second).Format(time.RFC3339)
	decoys := []struct {
		why string
		im  map[string]any
	}{
		{"foreign owner stamp", map[string]any{"name": "web-00-decoy", "properties": stamp("someone-else", web, slot)}},
		{"our stamp, no lineage row (inherited)", map[string]any{"name": "web-00-inherited", "properties": stamp(s.owner, web, slot)}},
		{"our stamp, no lineage row, old slot", map[string]any{"name": "web-00-old", "properties": stamp(s.owner, web, "2020-01-01T00:00:00Z")}},
		{"unstamped, same name pattern", map[string]any{"name": "web-00-120000"}},
	}
	for _, d := range decoys {
		id, err := s.sim.putImage(ctx, d.im)
		if err != nil {
			return err
		}
		s.decoyImages[id] = d.why
	}
	id, err := s.sim.putSnapshot(ctx, map[string]any{"name": "snapshot for web-00-decoy", "volume_id": "vol-decoy", "status": "available", "size": 1})
	if err != nil {
		return err
	}
	s.decoySnaps[id] = "someone else's volume snapshot"
	return nil
}

func (s *soak) startDaemon() error {
	args := []string{"daemon", "--config", s.cfgPath, "--drain-timeout", "30s", "--log-format", "json"}
	if s.hasDaemonFlag("--reconcile-interval") {
		args = append(args, "--reconcile-interval", "5s")
	}
	p, err := startProc(s.bin, args,
		[]string{"OS_CLIENT_CONFIG_FILE=" + filepath.Join(s.opts.Workdir, "clouds.yaml"), "OS_CLOUD=simcloud"},
		filepath.Join(s.opts.Workdir, "daemon.log"), nil)
	if err != nil {
		return fmt.Errorf("start daemon: %w", err)
	}
	s.mu.Lock()
	s.daemon = p
	s.starts++
	s.mu.Unlock()
	d, ok := waitReady(p, s.listen, 30*time.Second)
	s.mu.Lock()
	defer s.mu.Unlock()
	if !ok {
		s.notReady++
		s.logf("daemon pid %d not ready after %s (exited: %v)", p.pid(), d.Round(time.Millisecond), p.exited())
		return nil
	}
	if d > s.readyMax {
		s.readyMax = d
	}
	s.logf("daemon pid %d ready in %s", p.pid(), d.Round(time.Millisecond))
	return nil
}

// stopDaemon stops the running daemon gracefully (SIGTERM, then SIGKILL after 60 s).
func (s *soak) stopDaemon() (bool, error) {
	s.mu.Lock()
	p := s.daemon
	s.mu.Unlock()
	if p == nil || p.exited() {
		return true, nil
	}
	return p.stop(60 * time.Second)
}

// killLoop kill -9s the daemon Kills times at seeded random moments spread over the
// phase (drawn up front, so that every kill happens) and restarts it after a short
// random pause (so that some slots fall into the gap). A daemon that exits by
// itself is counted and restarted.
func (s *soak) killLoop(ctx context.Context) {
	start := time.Now()
	at := make([]time.Duration, s.opts.Kills)
	for i := range at {
		at[i] = time.Duration((0.03 + 0.9*s.float()) * float64(s.opts.Duration))
	}
	sort.Slice(at, func(i, j int) bool { return at[i] < at[j] })
	for {
		s.mu.Lock()
		p := s.daemon
		s.mu.Unlock()
		wait := time.Hour
		if len(at) > 0 {
			wait = time.Until(start.Add(at[0]))
		}
		select {
		case <-ctx.Done():
			return
		case <-p.done:
			s.mu.Lock()
			s.selfExits++
			s.mu.Unlock()
			fmt.Fprintf(s.log, "soak: daemon pid %d exited by itself: %v (see daemon.log); restarting\n", p.pid(), p.err)
			time.Sleep(time.Second)
			if err := s.startDaemon(); err != nil {
				fmt.Fprintf(s.log, "soak: %v\n", err)
				return
			}
			continue
		case <-time.After(wait):
		}
		at = at[1:]
		s.logf("kill -9 daemon pid %d", p.pid())
		p.kill()
		s.mu.Lock()
		s.kills++
		s.mu.Unlock()
		time.Sleep(time.Duration(s.intn(3000)) * time.Millisecond)
		if ctx.Err() != nil {
			// The convergence phase restarts it.
			return
		}
		if err := s.startDaemon(); err != nil {
			fmt.Fprintf(s.log, "soak: %v\n", err)
			return
		}
	}
}

// pollImages records every image the simulator holds, once a second, so that an
// image made and lost between the checks still counts towards duplicates.
func (s *soak) pollImages(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		ims, err := s.sim.images(ctx)
		if err == nil {
			s.mu.Lock()
			for _, im := range ims {
				if _, ok := s.seen[im.ID]; !ok {
					s.seen[im.ID] = im
				}
			}
			s.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// ours reports whether an image was made by createImage with our owner stamp.
func (s *soak) ours(im simImage) bool {
	return im.ServerID != "" && im.Properties["imagekeeper_owner"] == s.owner && im.Properties["imagekeeper_slot"] != ""
}

// arrangeMidRun protects one of our images and makes a volume from one of our
// snapshots a third of the way in: retention must keep the first and the deletion
// journal must keep (not force) the second.
func (s *soak) arrangeMidRun(ctx context.Context) {
	select {
	case <-ctx.Done():
		return
	case <-time.After(s.opts.Duration / 3):
	}
	ims, err := s.sim.images(ctx)
	if err != nil {
		return
	}
	sort.Slice(ims, func(i, j int) bool { return ims[i].ID < ims[j].ID })
	var prot, vol bool
	for _, im := range ims {
		if !s.ours(im) || im.Status != "active" {
			continue
		}
		if !prot && len(im.SnapshotIDs) == 0 {
			if s.sim.do(ctx, http.MethodPatch, "/images/"+im.ID, map[string]bool{"protected": true}, nil) == nil {
				s.mu.Lock()
				s.protected[im.ID] = true
				s.mu.Unlock()
				prot = true
				s.logf("protected our image %s", im.ID)
			}
		}
		if !vol && len(im.SnapshotIDs) > 0 {
			sn := im.SnapshotIDs[0]
			if s.sim.do(ctx, http.MethodPost, "/snapshots/"+sn+"/volumes", nil, nil) == nil {
				s.mu.Lock()
				s.inUse[sn] = true
				s.mu.Unlock()
				vol = true
				s.logf("made a volume from our snapshot %s", sn)
			}
		}
	}
}

// faultKinds are the faults injected, each a function that arranges it and returns
// how long it lasts (0: one-shot).
var faultKinds = []string{"5xx", "429", "latency", "token_expiry", "failed_snapshot", "failed_volume_snapshot",
	"stuck_image", "lost_create_response", "hang", "delete_errors", "busy_server", "snapshot_deleted", "late_image"}

// hasDaemonFlag reports whether the binary's daemon command knows flag (an older
// binary under test may not).
func (s *soak) hasDaemonFlag(flag string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.daemonHelp == "" {
		out, _ := exec.Command(s.bin, "daemon", "--help").CombinedOutput()
		s.daemonHelp = string(out) + " "
	}
	return strings.Contains(s.daemonHelp, flag)
}

func (s *soak) injectFaults(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Duration(1500+s.intn(3500)) * time.Millisecond):
		}
		kind := faultKinds[s.intn(len(faultKinds))]
		if err := s.inject(ctx, kind); err != nil {
			if ctx.Err() == nil {
				fmt.Fprintf(s.log, "soak: inject %s: %v\n", kind, err)
			}
			continue
		}
		s.mu.Lock()
		s.faults[kind]++
		s.mu.Unlock()
	}
}

func (s *soak) randomServer(role string, volume bool) string {
	var ids []string
	for i, sv := range s.servers {
		r := []string{"web", "web", "db", "db", "app"}[i%5]
		isVol := r == "db" || (r == "app" && i%2 == 1)
		if (role == "" || r == role) && isVol == volume {
			ids = append(ids, sv.ID)
		}
	}
	if len(ids) == 0 {
		return s.servers[0].ID
	}
	return ids[s.intn(len(ids))]
}

func (s *soak) inject(ctx context.Context, kind string) error {
	var f map[string]any
	last := time.Duration(2000+s.intn(5000)) * time.Millisecond
	switch kind {
	case "5xx":
		f = map[string]any{"op": "*", "error_rate": 0.1 + 0.3*s.float(), "error_status": []int{500, 502, 503}[s.intn(3)]}
	case "429":
		ops := []string{"*", "compute.servers.list", "image.list", "compute.createImage", "volume.snapshots.get", "image.get"}
		f = map[string]any{"op": ops[s.intn(len(ops))], "error_rate": 0.3 + 0.5*s.float(),
			"status_429_retry_after": fmt.Sprintf("%ds", 1+s.intn(2))}
	case "latency":
		f = map[string]any{"op": "*", "latency": fmt.Sprintf("%dms", 200+s.intn(1300))}
	case "token_expiry":
		return s.sim.do(ctx, http.MethodPost, "/expire-tokens", nil, nil)
	case "failed_snapshot":
		vol := s.intn(2) == 0
		return s.sim.do(ctx, http.MethodPost, "/servers/"+s.randomServer("", vol)+"/fail-next-snapshot", nil, nil)
	case "failed_volume_snapshot":
		return s.sim.do(ctx, http.MethodPost, "/servers/"+s.randomServer("", true)+"/fail-next-volume-snapshot", nil, nil)
	case "stuck_image":
		return s.sim.do(ctx, http.MethodPost, "/servers/"+s.randomServer("", false)+"/stick-next-image", nil, nil)
	case "lost_create_response":
		f = map[string]any{"op": "compute.createImage", "error_status": []int{500, 503, 504}[s.intn(3)], "after": true,
			"count": 1 + s.intn(3)}
		last = 30 * time.Second
	case "hang":
		ops := []string{"image.list", "compute.servers.list", "volume.snapshots.get", "image.get", "compute.createImage"}
		f = map[string]any{"op": ops[s.intn(len(ops))], "hang": true, "count": 1}
		last = 30 * time.Second
	case "late_image":
		// A big disk: the image becomes active 10-25 s after the policy's wait_timeout
		// (20 s). The slot fails; the daemon must keep watching it and promote it.
		by := time.Duration(25+s.intn(15)) * time.Second
		return s.sim.do(ctx, http.MethodPost, "/servers/"+s.randomServer("", false)+"/slow-next-image?by="+by.String(), nil, nil)
	case "busy_server":
		// Someone else's snapshot: the task state clears after a few seconds, and the
		// daemon must retry within the slot, not skip it.
		id := s.randomServer("", s.intn(2) == 0)
		task := "image_uploading"
		if err := s.sim.do(ctx, http.MethodPatch, "/servers/"+id, map[string]any{"task_state": task}, nil); err != nil {
			return err
		}
		d := time.Duration(2000+s.intn(6000)) * time.Millisecond
		s.logf("fault busy_server %s task_state %s for %s", id, task, d)
		go func() {
			select {
			case <-ctx.Done():
			case <-time.After(d):
			}
			cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = s.sim.do(cctx, http.MethodPatch, "/servers/"+id, map[string]any{"task_state": ""}, nil)
		}()
		return nil
	case "snapshot_deleted":
		// A volume snapshot behind one of our active images deleted behind our back:
		// the image is hollow and must stop counting as a backup.
		st, err := s.sim.state(ctx)
		if err != nil {
			return err
		}
		var cands [][2]string
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, im := range st.Images {
			if !s.ours(im) || im.Status != "active" || s.protected[im.ID] {
				continue
			}
			for _, sn := range im.SnapshotIDs {
				if !s.inUse[sn] {
					cands = append(cands, [2]string{im.ID, sn})
				}
			}
		}
		if len(cands) == 0 {
			return errors.New("no snapshot of an active image of ours to delete")
		}
		c := cands[s.intn(len(cands))]
		if err := s.sim.do(ctx, http.MethodDelete, "/snapshots/"+c[1], nil, nil); err != nil {
			return err
		}
		s.hollowed[c[0]] = c[1]
		s.logf("fault snapshot_deleted: snapshot %s of image %s", c[1], c[0])
		return nil
	case "delete_errors":
		ops := []string{"image.delete", "volume.snapshots.delete"}
		f = map[string]any{"op": ops[s.intn(2)], "error_status": 500, "count": 1 + s.intn(3)}
		last = 30 * time.Second
	}
	id, err := s.sim.setFault(ctx, f)
	if err != nil {
		return err
	}
	s.logf("fault %d %s %v for %s", id, kind, f, last)
	go func() {
		select {
		case <-ctx.Done():
		case <-time.After(last):
		}
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.sim.clearFault(cctx, id)
	}()
	return nil
}

// runConvergeCommands runs the one-shot commands that finish what the daemon left,
// when this binary has them: reconcile (report only, so that what the daemon did
// not adopt by itself stays visible) and prune, each until its output stops
// changing (at most 3 rounds).
func (s *soak) runConvergeCommands(ctx context.Context) {
	help, _ := exec.CommandContext(ctx, s.bin, "help").CombinedOutput()
	has := func(cmd string) bool { return strings.Contains(string(help), "\n  "+cmd+" ") }
	env := append(os.Environ(), "OS_CLIENT_CONFIG_FILE="+filepath.Join(s.opts.Workdir, "clouds.yaml"), "OS_CLOUD=simcloud")
	for _, step := range [][]string{{"reconcile"}, {"prune"}} {
		if !has(step[0]) {
			s.converge = append(s.converge, step[0]+": not in this binary (skipped)")
			continue
		}
		prev := ""
		for round := 1; round <= 3; round++ {
			cmd := exec.CommandContext(ctx, s.bin, append(step, "--config", s.cfgPath)...)
			cmd.Env = env
			out, err := cmd.CombinedOutput()
			if ctx.Err() != nil {
				s.converge = append(s.converge, fmt.Sprintf("%s round %d: cut by the convergence budget", step[0], round))
				return
			}
			_ = os.WriteFile(filepath.Join(s.opts.Workdir, fmt.Sprintf("converge-%s-%d.txt", step[0], round)), out, 0o644)
			s.converge = append(s.converge, fmt.Sprintf("%s round %d: exit %v, %d bytes of output", step[0], round, errString(err), len(out)))
			if string(out) == prev {
				break
			}
			prev = string(out)
		}
	}
}

func errString(err error) string {
	if err == nil {
		return "0"
	}
	return err.Error()
}
