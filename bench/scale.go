package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"
)

// benchScale measures the daemon at scale: time from exec to /readyz 200 and RSS
// with N servers, P policies and a lineage of R rows; then, with every policy due
// at the same minute, how late each policy's first createImage call is.
func benchScale(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("scale", flag.ContinueOnError)
	bin := fs.String("bin", "", "imagekeeper binary (default: build ./cmd/imagekeeper)")
	dirFlag := fs.String("dir", "", "work directory (default: a temporary one)")
	n := fs.Int("servers", 10000, "servers")
	policies := fs.Int("policies", 100, "policies (each selects servers/policies servers); all due every minute")
	perServer := fs.Int("images", 100, "lineage rows per server (servers x images rows in all)")
	conc := fs.Int("concurrency", 16, "limits.concurrency")
	rps := fs.Float64("rps", 1000, "limits.requests_per_second")
	profile := fs.String("profile", "", "write a 15 s CPU profile of the daemon, taken from the slot instant, to this file (the binary must have --pprof)")
	heap := fs.String("heap", "", "write a heap profile of the daemon taken 15 s after the slot instant to this file, its MemStats to FILE.txt and its /proc status to FILE.status (the binary must have --pprof)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if _, err := exec.LookPath("sqlite3"); err != nil {
		return fmt.Errorf("the lineage fixture is written with the sqlite3 shell (apt-get install -y sqlite3): %w", err)
	}
	dir, err := workDir(*dirFlag, "scale")
	if err != nil {
		return err
	}
	b, err := binary(ctx, *bin, dir)
	if err != nil {
		return err
	}
	s, err := startSim(b, dir, true, "--image-build-time", "5s")
	if err != nil {
		return err
	}
	defer s.close()
	t0 := time.Now()
	ids, err := s.addServers(ctx, *n, func(i int) map[string]any {
		spec := map[string]any{"name": fmt.Sprintf("srv-%05d", i), "tags": []string{"bench", fmt.Sprintf("pool=%02d", i%*policies)}}
		if i%4 == 3 {
			spec["volumes"] = 1
		}
		return spec
	})
	if err != nil {
		return err
	}
	pool := map[string]int{}
	for i, id := range ids {
		pool[id] = i % *policies
	}
	fmt.Printf("setup: %d servers added in %s\n", *n, time.Since(t0).Round(time.Millisecond))

	db := filepath.Join(dir, "lineage.db")
	listen, err := freePort()
	if err != nil {
		return err
	}
	cfg := filepath.Join(dir, "scale.yaml")
	var c strings.Builder
	fmt.Fprintf(&c, "cloud: simcloud\nstate: %s\nlisten: %s\nlimits: {concurrency: %d, requests_per_second: %g}\npolicies:\n", db, listen, *conc, *rps)
	for p := range *policies {
		fmt.Fprintf(&c, `  - name: p-%02d
    select: {tags: [bench, pool=%02d]}
    schedule: {cron: "* * * * *", catch_up: none}
    image:
      name: '{{ .Server.Name }}-{{ .Slot.Format "20060102-1504" }}'
      wait_timeout: 30m
    retention: {keep_last: 1000, min_keep: 1}
`, p, p)
	}
	if err := os.WriteFile(cfg, []byte(c.String()), 0o644); err != nil {
		return err
	}

	t0 = time.Now()
	if err := writeLineage(ctx, b, cfg, s.env(), db, ids, *policies, *perServer); err != nil {
		return err
	}
	fi, _ := os.Stat(db)
	fmt.Printf("setup: lineage of %d rows written in %s (%s)\n", *n**perServer, time.Since(t0).Round(time.Millisecond), mib(fi.Size()/1024))

	// Start early in a minute so that readiness comes before the next boundary.
	if sec := time.Now().Second(); sec > 5 {
		time.Sleep(time.Duration(60-sec+2) * time.Second)
	}
	logf, err := os.Create(filepath.Join(dir, "daemon.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	dargs := []string{"daemon", "--config", cfg, "--drain-timeout", "5s"}
	var pprofAddr string
	if *profile != "" || *heap != "" {
		if pprofAddr, err = freePort(); err != nil {
			return err
		}
		dargs = append(dargs, "--pprof", pprofAddr)
	}
	d, err := startChild(b, dargs, s.env(), logf, logf)
	if err != nil {
		return err
	}
	defer d.kill()
	pid := d.cmd.Process.Pid
	ready, err := waitReady(ctx, d, listen, 3*time.Minute)
	if err != nil {
		return err
	}
	rssReady, _ := procStatus(pid)
	cpuReady := procCPU(pid)
	due := time.Now().Truncate(time.Minute).Add(time.Minute)
	fmt.Printf("daemon ready in %s, RSS %s, CPU %.2fs; all %d policies due at %s\n",
		ready.Round(time.Millisecond), mib(rssReady), cpuReady.Seconds(), *policies, due.Format("15:04:05"))

	// Idle CPU: from a few seconds after ready (start-up work done) to just before
	// the slot, nothing is due; what the daemon burns then is its idle cost.
	idleFrom, idleTo := time.Now().Add(5*time.Second), due.Add(-2*time.Second)
	var idleCPU, idleWall time.Duration
	if idleTo.Sub(idleFrom) >= 10*time.Second {
		time.Sleep(time.Until(idleFrom))
		c0, t0 := procCPU(pid), time.Now()
		time.Sleep(time.Until(idleTo))
		idleCPU, idleWall = procCPU(pid)-c0, time.Since(t0)
	}
	time.Sleep(time.Until(due))
	cpuDue := procCPU(pid)
	if *profile != "" {
		go fetchProfile(pprofAddr, *profile)
	}
	if *heap != "" {
		go func() {
			time.Sleep(time.Until(due.Add(15 * time.Second)))
			fetchHeap(pprofAddr, pid, *heap)
		}()
	}

	// Wait for every policy's first createImage after due (at most 5 minutes).
	first := map[int]time.Time{}
	deadline := due.Add(5 * time.Minute)
	var rssMax int64
	for len(first) < *policies && time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-d.done:
			return fmt.Errorf("daemon exited: %v (see %s)", d.err, filepath.Join(dir, "daemon.log"))
		case <-time.After(time.Second):
		}
		if rss, _ := procStatus(pid); rss > rssMax {
			rssMax = rss
		}
		if err := firstCreates(filepath.Join(dir, "simcloud.log"), due, pool, first); err != nil {
			return err
		}
	}
	// Let the slot's waits run a little: the peak RSS of a slot in flight.
	for range 20 {
		time.Sleep(time.Second)
		if rss, _ := procStatus(pid); rss > rssMax {
			rssMax = rss
		}
	}
	_, hwm := procStatus(pid)
	cpuAll := procCPU(pid)
	slotWall := time.Since(due)
	creates, err := countCreates(filepath.Join(dir, "simcloud.log"), due)
	if err != nil {
		return err
	}
	var late []time.Duration
	for _, t := range first {
		late = append(late, t.Sub(due))
	}
	sort.Slice(late, func(i, j int) bool { return late[i] < late[j] })
	pct := func(p float64) time.Duration {
		if len(late) == 0 {
			return -1
		}
		i := int(p*float64(len(late))+0.999999) - 1
		return late[max(0, min(i, len(late)-1))]
	}
	fmt.Printf("machine: %s\n", machine())
	fmt.Printf("lateness (due -> first createImage) over %d of %d policies: min %s p50 %s p99 %s max %s (concurrency %d, requests_per_second %g)\n",
		len(late), *policies, pct(0).Round(time.Millisecond), pct(0.5).Round(time.Millisecond), pct(0.99).Round(time.Millisecond),
		pct(1).Round(time.Millisecond), *conc, *rps)
	fmt.Printf("daemon RSS at ready %s, highest sampled %s, peak (VmHWM) %s; CPU %.2fs to ready, %.2fs in all\n",
		mib(rssReady), mib(rssMax), mib(hwm), cpuReady.Seconds(), cpuAll.Seconds())
	idlePct := -1.0
	if idleWall > 0 {
		idlePct = 100 * idleCPU.Seconds() / idleWall.Seconds()
		fmt.Printf("idle CPU before the slot: %.2fs over %s (%.2f%% of a core)\n", idleCPU.Seconds(), idleWall.Round(time.Second), idlePct)
	}
	cpuSlot := cpuAll - cpuDue
	perCreate := 0.0
	if creates > 0 {
		perCreate = cpuSlot.Seconds() * 1000 / float64(creates)
	}
	fmt.Printf("slot: %d createImage calls in %s after due, daemon CPU %.2fs meanwhile (%.2f ms per createImage)\n",
		creates, slotWall.Round(time.Second), cpuSlot.Seconds(), perCreate)
	fmt.Printf("load: %s\n", loadavg())
	fmt.Printf("bench scale: servers=%d policies=%d rows=%d ready_s=%.2f rss_ready_mib=%.1f rss_peak_mib=%.1f late_p50_s=%.2f late_p99_s=%.2f creates=%d cpu_per_create_ms=%.2f idle_cpu_pct=%.2f\n",
		*n, *policies, *n**perServer, ready.Seconds(), float64(rssReady)/1024, float64(hwm)/1024, pct(0.5).Seconds(), pct(0.99).Seconds(),
		creates, perCreate, idlePct)
	_ = d.cmd.Process.Signal(os.Interrupt)
	select {
	case <-d.done:
	case <-time.After(15 * time.Second):
	}
	return nil
}

func waitReady(ctx context.Context, c *child, listen string, limit time.Duration) (time.Duration, error) {
	hc := &http.Client{Timeout: 2 * time.Second}
	for time.Since(c.start) < limit {
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-c.done:
			return 0, fmt.Errorf("daemon exited before ready: %v", c.err)
		default:
		}
		if resp, err := hc.Get("http://" + listen + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return time.Since(c.start), nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return 0, fmt.Errorf("not ready within %s", limit)
}

// countCreates counts the createImage requests at or after due in the simulator's log.
func countCreates(logPath string, due time.Time) (int, error) {
	f, err := os.Open(logPath)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		m := createLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		if t, err := time.Parse(time.RFC3339Nano, m[1]); err == nil && !t.Before(due) {
			n++
		}
	}
	return n, sc.Err()
}

// fetchProfile saves a 15 s CPU profile of the daemon's pprof endpoint to path (15 s: the
// bench may stop the daemon 20 s after the last first createImage).
func fetchProfile(addr, path string) {
	hc := &http.Client{Timeout: time.Minute}
	resp, err := hc.Get("http://" + addr + "/debug/pprof/profile?seconds=15")
	if err != nil {
		fmt.Fprintf(os.Stderr, "profile: %v\n", err)
		return
	}
	defer resp.Body.Close()
	f, err := os.Create(path)
	if err != nil {
		fmt.Fprintf(os.Stderr, "profile: %v\n", err)
		return
	}
	defer f.Close()
	if _, err := io.Copy(f, resp.Body); err != nil {
		fmt.Fprintf(os.Stderr, "profile: %v\n", err)
	}
}

// fetchHeap saves the daemon's heap profile (as of its last GC) to path, the
// runtime's MemStats (the text form's trailer) to path.txt and /proc/PID/status
// (RssAnon against RssFile) to path.status, all at one instant: what the RSS is made
// of while a slot is in flight.
func fetchHeap(addr string, pid int, path string) {
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err := os.WriteFile(path+".status", status, 0o644); err != nil {
		fmt.Fprintf(os.Stderr, "heap: %v\n", err)
	}
	hc := &http.Client{Timeout: time.Minute}
	for file, query := range map[string]string{path: "", path + ".txt": "?debug=1"} {
		resp, err := hc.Get("http://" + addr + "/debug/pprof/heap" + query)
		if err != nil {
			fmt.Fprintf(os.Stderr, "heap: %v\n", err)
			return
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil {
			err = os.WriteFile(file, body, 0o644)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "heap: %v\n", err)
		}
	}
}

// loadavg returns the first three fields of /proc/loadavg: the machine's load,
// which every figure of this shared machine must be read with.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

var createLine = regexp.MustCompile(`^time=(\S+) .*method=POST path=\S*/servers/([^/\s]+)/action op=compute\.createImage`)

// firstCreates records, per pool, the first createImage request at or after due.
func firstCreates(logPath string, due time.Time, pool map[string]int, first map[int]time.Time) error {
	f, err := os.Open(logPath)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		m := createLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		t, err := time.Parse(time.RFC3339Nano, m[1])
		if err != nil || t.Before(due) {
			continue
		}
		p, ok := pool[m[2]]
		if !ok {
			continue
		}
		if cur, seen := first[p]; !seen || t.Before(cur) {
			first[p] = t
		}
	}
	return sc.Err()
}

// writeLineage makes the lineage database with the binary under test (so that its
// schema is the binary's, and an older binary can be measured), reads the owner it
// made, and fills it with the sqlite3 shell in one transaction: rows images per
// server, one a day going back, every one good, under the policy that selects the
// server.
func writeLineage(ctx context.Context, bin, cfg string, env []string, db string, ids []string, policies, perServer int) error {
	mk := exec.CommandContext(ctx, bin, "images", "--config", cfg)
	mk.Env = append(os.Environ(), env...)
	if out, err := mk.CombinedOutput(); err != nil {
		return fmt.Errorf("make the lineage database with %s images: %w\n%s", bin, err, out)
	}
	out, err := exec.CommandContext(ctx, "sqlite3", db, "SELECT owner FROM installation WHERE id = 1").Output()
	if err != nil {
		return fmt.Errorf("read the owner: %w", err)
	}
	owner := strings.TrimSpace(string(out))
	var sql bytes.Buffer
	sql.WriteString("PRAGMA journal_mode=WAL;\nBEGIN;\nCREATE TEMP TABLE srv (n INTEGER PRIMARY KEY, id TEXT);\n")
	for i, id := range ids {
		fmt.Fprintf(&sql, "INSERT INTO srv VALUES (%d, '%s');\n", i, id)
	}
	fmt.Fprintf(&sql, `WITH RECURSIVE k(k) AS (SELECT 0 UNION ALL SELECT k + 1 FROM k WHERE k + 1 < %d)
INSERT INTO images (image_id, name, policy, server_id, server_name, slot, owner, metadata, state,
                    requested_at, created_at, active_at, size_bytes, updated_at)
SELECT printf('img-%%05d-%%03d', srv.n, k.k), printf('srv-%%05d-%%03d', srv.n, k.k), printf('p-%%02d', srv.n %% %d),
       srv.id, printf('srv-%%05d', srv.n),
       strftime('%%Y-%%m-%%dT02:30:00.000000000Z', 'now', printf('-%%d days', k.k + 1)),
       '%s', '{}', 'good',
       strftime('%%Y-%%m-%%dT02:30:00.000000000Z', 'now', printf('-%%d days', k.k + 1)),
       strftime('%%Y-%%m-%%dT02:30:01.000000000Z', 'now', printf('-%%d days', k.k + 1)),
       strftime('%%Y-%%m-%%dT02:35:00.000000000Z', 'now', printf('-%%d days', k.k + 1)),
       21430272,
       strftime('%%Y-%%m-%%dT02:35:00.000000000Z', 'now', printf('-%%d days', k.k + 1))
FROM srv, k;
COMMIT;
PRAGMA wal_checkpoint(TRUNCATE);
`, perServer, policies, owner)
	cmd := exec.CommandContext(ctx, "sqlite3", db)
	cmd.Stdin = &sql
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("sqlite3: %w\n%s", err, out)
	}
	return nil
}
