package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// binary returns the imagekeeper binary to measure: bin when set, else a fresh
// build of ./cmd/imagekeeper in dir.
func binary(ctx context.Context, bin, dir string) (string, error) {
	if bin != "" {
		return filepath.Abs(bin)
	}
	out := filepath.Join(dir, "imagekeeper")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/imagekeeper")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/imagekeeper (run from the repository root): %w\n%s", err, b)
	}
	return out, nil
}

// workDir returns dir, or a new temporary directory.
func workDir(dir, name string) (string, error) {
	if dir != "" {
		return dir, os.MkdirAll(dir, 0o755)
	}
	return os.MkdirTemp("", "imagekeeper-bench-"+name+"-")
}

// child is a running child process.
type child struct {
	cmd   *exec.Cmd
	start time.Time
	done  chan struct{}
	err   error
	wall  time.Duration
}

func startChild(bin string, args, env []string, stdout, stderr io.Writer) (*child, error) {
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	c := &child{cmd: cmd, done: make(chan struct{})}
	c.start = time.Now()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		c.err = cmd.Wait()
		c.wall = time.Since(c.start)
		close(c.done)
	}()
	return c, nil
}

// usage is what getrusage says about a waited child (and its waited descendants).
type usage struct {
	Wall    time.Duration
	CPU     time.Duration // user + system
	User    time.Duration
	Sys     time.Duration
	MaxRSSK int64 // kilobytes
}

func (c *child) usage() usage {
	u := usage{Wall: c.wall}
	if ru, ok := c.cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		u.User = time.Duration(ru.Utime.Nano())
		u.Sys = time.Duration(ru.Stime.Nano())
		u.CPU = u.User + u.Sys
		u.MaxRSSK = ru.Maxrss
	}
	return u
}

func (c *child) kill() {
	_ = c.cmd.Process.Signal(syscall.SIGKILL)
	<-c.done
}

// runChild runs a command to the end and returns its usage.
func runChild(ctx context.Context, bin string, args, env []string, stdout, stderr io.Writer) (usage, error) {
	c, err := startChild(bin, args, env, stdout, stderr)
	if err != nil {
		return usage{}, err
	}
	select {
	case <-c.done:
	case <-ctx.Done():
		c.kill()
		return usage{}, ctx.Err()
	}
	return c.usage(), c.err
}

// sim is a standalone `imagekeeper simcloud` process.
type sim struct {
	proc *child
	base string
	hc   *http.Client
	dir  string
}

// startSim starts the simulator with no servers and writes dir/clouds.yaml.
func startSim(bin, dir string, verbose bool, extra ...string) (*sim, error) {
	args := append([]string{"simcloud", "--listen", "127.0.0.1:0", "--servers", "0",
		"--clouds-yaml", filepath.Join(dir, "clouds.yaml")}, extra...)
	if verbose {
		args = append(args, "-v")
	}
	logf, err := os.Create(filepath.Join(dir, "simcloud.log"))
	if err != nil {
		return nil, err
	}
	pr, pw := io.Pipe()
	c, err := startChild(bin, args, nil, pw, logf)
	if err != nil {
		return nil, err
	}
	urls := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			if u, ok := strings.CutPrefix(sc.Text(), "simcloud listening on "); ok {
				select {
				case urls <- strings.TrimSpace(u):
				default:
				}
			}
		}
	}()
	select {
	case u := <-urls:
		return &sim{proc: c, base: u, dir: dir, hc: &http.Client{Timeout: 30 * time.Second}}, nil
	case <-c.done:
		return nil, fmt.Errorf("simcloud exited: %v", c.err)
	case <-time.After(30 * time.Second):
		c.kill()
		return nil, errors.New("simcloud did not start within 30s")
	}
}

func (s *sim) close() { s.proc.kill() }

func (s *sim) env() []string {
	return []string{"OS_CLIENT_CONFIG_FILE=" + filepath.Join(s.dir, "clouds.yaml"), "OS_CLOUD=simcloud"}
}

func (s *sim) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, s.base+"/_sim"+path, rd)
	if err != nil {
		return err
	}
	resp, err := s.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		return fmt.Errorf("%s /_sim%s: %s: %s", method, path, resp.Status, bytes.TrimSpace(data))
	}
	if out != nil {
		return json.Unmarshal(data, out)
	}
	return nil
}

// addServers adds n servers made by spec(i), eight at a time, and returns their ids
// in order.
func (s *sim) addServers(ctx context.Context, n int, spec func(i int) map[string]any) ([]string, error) {
	ids := make([]string, n)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	next := make(chan int)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				var out struct {
					ID string `json:"id"`
				}
				if err := s.do(ctx, http.MethodPost, "/servers", spec(i), &out); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					continue
				}
				ids[i] = out.ID
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	return ids, firstErr
}

func (s *sim) requests(ctx context.Context) (map[string]int, error) {
	var m map[string]int
	err := s.do(ctx, http.MethodGet, "/requests", nil, &m)
	return m, err
}

func diffRequests(before, after map[string]int) (map[string]int, int) {
	d := map[string]int{}
	total := 0
	for k, v := range after {
		if n := v - before[k]; n > 0 {
			d[k] = n
			total += n
		}
	}
	return d, total
}

func (s *sim) setFault(ctx context.Context, f map[string]any) error {
	return s.do(ctx, http.MethodPost, "/faults", f, nil)
}

// procStatus reads VmRSS and VmHWM (kilobytes) of a live process.
func procStatus(pid int) (rssK, hwmK int64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		n, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			rssK = n
		case "VmHWM:":
			hwmK = n
		}
	}
	return rssK, hwmK
}

// procCPU reads utime+stime of a live process from /proc/PID/stat.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 {
		s = s[i+2:]
	}
	f := strings.Fields(s)
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ is 100 on Linux
}

func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	a := ln.Addr().String()
	return a, ln.Close()
}

// machine describes where the figures come from.
func machine() string {
	cpu := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	mem := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		f := strings.Fields(strings.SplitN(string(b), "\n", 2)[0])
		if len(f) >= 2 {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			mem = fmt.Sprintf(", %.1f GiB memory", float64(kb)/(1<<20))
		}
	}
	load := ""
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		load = ", load average " + strings.Join(strings.Fields(string(b))[:3], " ")
	}
	return fmt.Sprintf("%d CPUs (%s)%s%s, %s", runtime.NumCPU(), cpu, mem, load, runtime.Version())
}

func mib(k int64) string { return fmt.Sprintf("%.1f MiB", float64(k)/1024) }
