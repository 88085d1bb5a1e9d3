package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// buildBinary builds ./cmd/imagekeeper into dir, from the module root that holds
// this command (the current directory or one of its parents).
func buildBinary(ctx context.Context, dir string) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, "imagekeeper")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/imagekeeper")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/imagekeeper: %w\n%s", err, b)
	}
	return out, nil
}

func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the current directory: pass -bin")
		}
		dir = parent
	}
}

// freePort returns a loopback address nobody listens on right now.
func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := ln.Addr().String()
	return addr, ln.Close()
}

// proc is a child process with its output in a log file.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
	log  *os.File
}

func startProc(bin string, args, env []string, logPath string, stdout io.Writer) (*proc, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(f, "==== %s start %s %s\n", time.Now().UTC().Format(time.RFC3339Nano), filepath.Base(bin), strings.Join(args, " "))
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = f
	if stdout != nil {
		cmd.Stdout = stdout
	} else {
		cmd.Stdout = f
	}
	// A process group of its own: a Ctrl-C of the soak must not reach it before the
	// soak decides how to stop it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, err
	}
	p := &proc{cmd: cmd, done: make(chan struct{}), log: f}
	go func() {
		p.err = cmd.Wait()
		fmt.Fprintf(f, "==== %s exit %v\n", time.Now().UTC().Format(time.RFC3339Nano), p.err)
		f.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill sends SIGKILL to this process only and waits for it.
func (p *proc) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// stop sends SIGTERM and waits up to d, then SIGKILL; it reports whether the
// process stopped by itself, and its exit error.
func (p *proc) stop(d time.Duration) (clean bool, err error) {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return true, p.err
	case <-time.After(d):
		p.kill()
		return false, p.err
	}
}

// startSim starts `imagekeeper simcloud` and returns it with its base URL.
func startSim(bin, dir string, seed int64) (*proc, string, error) {
	pr, pw := io.Pipe()
	p, err := startProc(bin, []string{"simcloud", "--listen", "127.0.0.1:0", "--servers", "0",
		"--seed", fmt.Sprint(seed), "--clouds-yaml", filepath.Join(dir, "clouds.yaml"),
		"--image-build-time", "2s", "--snapshot-build-time", "1s", "-v"},
		nil, filepath.Join(dir, "simcloud.log"), pw)
	if err != nil {
		return nil, "", err
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
		return p, u, nil
	case <-p.done:
		return nil, "", fmt.Errorf("simcloud exited at start: %v (see %s)", p.err, filepath.Join(dir, "simcloud.log"))
	case <-time.After(30 * time.Second):
		p.kill()
		return nil, "", errors.New("simcloud did not print its URL within 30s")
	}
}

// waitReady polls /readyz until it answers 200, the process exits or d passes.
func waitReady(p *proc, listen string, d time.Duration) (time.Duration, bool) {
	start := time.Now()
	c := &http.Client{Timeout: 2 * time.Second}
	for time.Since(start) < d {
		if p.exited() {
			return time.Since(start), false
		}
		resp, err := c.Get("http://" + listen + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return time.Since(start), true
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return time.Since(start), false
}
