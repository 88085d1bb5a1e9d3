package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/imagekeeper/imagekeeper/scheduler"
)

// runConfig is a policy file with one policy selecting every server tagged bench.
func runConfig(dir string, concurrency int, rps float64) string {
	return fmt.Sprintf(`cloud: simcloud
state: %s
limits: {concurrency: %d, requests_per_second: %g}
policies:
  - name: bench
    select: {tags: [bench]}
    schedule: {cron: "@daily"}
    image:
      name: '{{ .Server.Name }}-{{ .Slot.Format "20060102-1504" }}'
      wait_timeout: 30m
    retention: {keep_last: 7}
`, filepath.Join(dir, "lineage.db"), concurrency, rps)
}

// imagekeeperRun runs `imagekeeper run --policy bench` once and returns its usage
// and output.
func imagekeeperRun(ctx context.Context, bin, dir string, s *sim, concurrency int, rps float64) (usage, string, error) {
	cfg := filepath.Join(dir, "bench.yaml")
	if err := os.WriteFile(cfg, []byte(runConfig(dir, concurrency, rps)), 0o644); err != nil {
		return usage{}, "", err
	}
	var out bytes.Buffer
	u, err := runChild(ctx, bin, []string{"run", "--config", cfg, "--policy", "bench", "--quiet"}, s.env(), &out, &out)
	if err != nil {
		return u, out.String(), fmt.Errorf("imagekeeper run: %w\n%s", err, out.String())
	}
	return u, out.String(), nil
}

func opsLine(d map[string]int, per int) string {
	keys := make([]string, 0, len(d))
	for k := range d {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%.2f", k, float64(d[k])/float64(per)))
	}
	return strings.Join(parts, " ")
}

// benchSlot measures one slot over N servers against the ideal bound
// ceil(N/concurrency) x create latency + build time + one poll interval.
func benchSlot(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("slot", flag.ContinueOnError)
	bin := fs.String("bin", "", "imagekeeper binary (default: build ./cmd/imagekeeper)")
	dirFlag := fs.String("dir", "", "work directory (default: a temporary one)")
	n := fs.Int("servers", 1000, "image-backed servers")
	latency := fs.Duration("latency", 50*time.Millisecond, "latency the simulator adds to every call")
	build := fs.Duration("build", 5*time.Second, "image build time")
	conc := fs.Int("concurrency", 16, "limits.concurrency")
	rps := fs.Float64("rps", 100000, "limits.requests_per_second (high enough not to bind)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	dir, err := workDir(*dirFlag, "slot")
	if err != nil {
		return err
	}
	b, err := binary(ctx, *bin, dir)
	if err != nil {
		return err
	}
	s, err := startSim(b, dir, false, "--image-build-time", build.String())
	if err != nil {
		return err
	}
	defer s.close()
	if _, err := s.addServers(ctx, *n, func(i int) map[string]any {
		return map[string]any{"name": fmt.Sprintf("web-%04d", i), "tags": []string{"bench"}}
	}); err != nil {
		return err
	}
	if err := s.setFault(ctx, map[string]any{"op": "*", "latency": latency.String()}); err != nil {
		return err
	}
	before, err := s.requests(ctx)
	if err != nil {
		return err
	}
	simCPU0 := procCPU(s.proc.cmd.Process.Pid)
	u, out, err := imagekeeperRun(ctx, b, dir, s, *conc, *rps)
	if err != nil {
		return err
	}
	simCPU := procCPU(s.proc.cmd.Process.Pid) - simCPU0
	after, err := s.requests(ctx)
	if err != nil {
		return err
	}
	d, total := diffRequests(before, after)
	poll := scheduler.DefaultPollInterval
	ideal := time.Duration(math.Ceil(float64(*n)/float64(*conc)))*(*latency) + *build + poll
	fmt.Printf("machine: %s\n", machine())
	fmt.Printf("setup: %d image-backed servers, %s latency on every call, %s build, concurrency %d, requests_per_second %g (does not bind: %d calls in %s is %.0f/s)\n",
		*n, *latency, *build, *conc, *rps, total, u.Wall.Round(time.Millisecond), float64(total)/u.Wall.Seconds())
	fmt.Printf("imagekeeper run said: %s", lastLines(out, 2))
	fmt.Printf("wall %s, ideal bound %s (ceil(%d/%d) x %s + %s build + %s poll interval), ratio %.2f\n",
		u.Wall.Round(time.Millisecond), ideal, *n, *conc, *latency, *build, poll, u.Wall.Seconds()/ideal.Seconds())
	fmt.Printf("cloud calls %d = %.2f per server: %s\n", total, float64(total)/float64(*n), opsLine(d, *n))
	fmt.Printf("imagekeeper CPU %.2fs (user %.2fs, sys %.2fs), peak RSS %s; simulator CPU %.2fs\n",
		u.CPU.Seconds(), u.User.Seconds(), u.Sys.Seconds(), mib(u.MaxRSSK), simCPU.Seconds())
	fmt.Printf("bench slot: servers=%d wall_s=%.2f ideal_s=%.2f ratio=%.2f calls_per_server=%.2f cpu_s=%.2f peak_rss_mib=%.1f\n",
		*n, u.Wall.Seconds(), ideal.Seconds(), u.Wall.Seconds()/ideal.Seconds(), float64(total)/float64(*n), u.CPU.Seconds(), float64(u.MaxRSSK)/1024)
	return nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n") + "\n"
}

// benchAlternative runs, in one run against one simulator, a shell loop of
// `openstack server image create --wait` over N servers and `imagekeeper run` over
// the same servers, and compares wall time and CPU (getrusage of each waited child,
// which includes every process the shell loop started).
func benchAlternative(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("alternative", flag.ContinueOnError)
	bin := fs.String("bin", "", "imagekeeper binary (default: build ./cmd/imagekeeper)")
	dirFlag := fs.String("dir", "", "work directory (default: a temporary one)")
	n := fs.Int("servers", 100, "servers (every other one volume-backed)")
	build := fs.Duration("build", 2*time.Second, "image build time of image-backed servers")
	conc := fs.Int("concurrency", 16, "limits.concurrency of imagekeeper")
	if err := fs.Parse(args); err != nil {
		return err
	}
	osc, err := exec.LookPath("openstack")
	if err != nil {
		return fmt.Errorf("python3-openstackclient is not installed (apt-get install -y python3-openstackclient): %w", err)
	}
	dir, err := workDir(*dirFlag, "alternative")
	if err != nil {
		return err
	}
	b, err := binary(ctx, *bin, dir)
	if err != nil {
		return err
	}
	s, err := startSim(b, dir, false, "--image-build-time", build.String())
	if err != nil {
		return err
	}
	defer s.close()
	ids, err := s.addServers(ctx, *n, func(i int) map[string]any {
		spec := map[string]any{"name": fmt.Sprintf("srv-%03d", i), "tags": []string{"bench"}}
		if i%2 == 1 {
			spec["volumes"] = 1
		}
		return spec
	})
	if err != nil {
		return err
	}

	// imagekeeper first: its slot is the current minute; the loop's images are named
	// apart so the two never meet. The servers' task states clear after the build
	// time, which the loop's first createImage waits out by starting later.
	r0, _ := s.requests(ctx)
	iu, out, err := imagekeeperRun(ctx, b, dir, s, *conc, 100000)
	if err != nil {
		return err
	}
	r1, _ := s.requests(ctx)
	_, ikCalls := diffRequests(r0, r1)
	time.Sleep(*build + time.Second)

	var script strings.Builder
	script.WriteString("set -e\n")
	for i, id := range ids {
		fmt.Fprintf(&script, "openstack server image create --wait --name loop-%03d %s >/dev/null\n", i, id)
	}
	scriptPath := filepath.Join(dir, "loop.sh")
	if err := os.WriteFile(scriptPath, []byte(script.String()), 0o644); err != nil {
		return err
	}
	var loopOut bytes.Buffer
	lu, err := runChild(ctx, "/bin/bash", []string{scriptPath}, s.env(), &loopOut, &loopOut)
	if err != nil {
		return fmt.Errorf("openstack loop: %w\n%s", err, lastLines(loopOut.String(), 5))
	}
	r2, _ := s.requests(ctx)
	_, loopCalls := diffRequests(r1, r2)

	fmt.Printf("machine: %s\n", machine())
	fmt.Printf("setup: %d servers (%d image-backed with a %s build, %d volume-backed), no added latency; %s\n",
		*n, (*n+1)/2, *build, *n/2, osc)
	fmt.Printf("imagekeeper run said: %s", lastLines(out, 2))
	fmt.Printf("openstack loop: wall %s, CPU %.1fs (user %.1fs, sys %.1fs), %d cloud calls (%.1f per server)\n",
		lu.Wall.Round(time.Millisecond), lu.CPU.Seconds(), lu.User.Seconds(), lu.Sys.Seconds(), loopCalls, float64(loopCalls)/float64(*n))
	fmt.Printf("imagekeeper run: wall %s, CPU %.2fs (user %.2fs, sys %.2fs), peak RSS %s, %d cloud calls (%.1f per server)\n",
		iu.Wall.Round(time.Millisecond), iu.CPU.Seconds(), iu.User.Seconds(), iu.Sys.Seconds(), mib(iu.MaxRSSK), ikCalls, float64(ikCalls)/float64(*n))
	fmt.Printf("ratios (loop / imagekeeper): wall %.1fx, CPU %.0fx, cloud calls %.1fx\n",
		lu.Wall.Seconds()/iu.Wall.Seconds(), lu.CPU.Seconds()/iu.CPU.Seconds(), float64(loopCalls)/float64(ikCalls))
	fmt.Printf("bench alternative: servers=%d loop_wall_s=%.1f loop_cpu_s=%.1f ik_wall_s=%.2f ik_cpu_s=%.2f wall_ratio=%.1f cpu_ratio=%.0f\n",
		*n, lu.Wall.Seconds(), lu.CPU.Seconds(), iu.Wall.Seconds(), iu.CPU.Seconds(),
		lu.Wall.Seconds()/iu.Wall.Seconds(), lu.CPU.Seconds()/iu.CPU.Seconds())
	return nil
}
