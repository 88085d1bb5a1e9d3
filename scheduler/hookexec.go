package scheduler

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

// MaxHookOutput bounds what is kept of a hook's stdout and of its stderr: the rest
// is read and dropped, so that a chatty or hostile hook cannot fill memory or the
// lineage.
const MaxHookOutput = 8 << 10

// hookKillGrace is how long a hook's process group has after the timeout's SIGKILL
// to let go of its output pipes before the run stops waiting for them.
const hookKillGrace = 5 * time.Second

// hookResult is what one hook run did.
type hookResult struct {
	Result   string // HookOK, HookFailed or HookTimeout
	ExitCode int    // -1 when it did not exit by itself
	Err      string // why it failed, "" when ok
	Stdout   string // at most MaxHookOutput bytes
	Stderr   string
	// Truncated says that output beyond MaxHookOutput was dropped.
	Truncated bool
	Duration  time.Duration
}

// summary words a result for events and logs.
func (h hookResult) summary() string {
	var b strings.Builder
	b.WriteString(h.Result)
	if h.Err != "" {
		b.WriteString(": " + h.Err)
	}
	fmt.Fprintf(&b, " (%s)", h.Duration.Round(time.Millisecond))
	if h.Stdout != "" {
		b.WriteString("; stdout: " + strings.TrimSpace(h.Stdout))
	}
	if h.Stderr != "" {
		b.WriteString("; stderr: " + strings.TrimSpace(h.Stderr))
	}
	if h.Truncated {
		fmt.Fprintf(&b, " [output cut at %d bytes per stream]", MaxHookOutput)
	}
	return b.String()
}

// boundedBuffer keeps the first max bytes written to it and counts the rest.
type boundedBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	max     int
	dropped bool
}

func (b *boundedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := b.max - b.buf.Len(); room > 0 {
		if len(p) > room {
			b.buf.Write(p[:room])
			b.dropped = true
		} else {
			b.buf.Write(p)
		}
	} else if len(p) > 0 {
		b.dropped = true
	}
	return len(p), nil // never an error: a short write would make the hook see EPIPE
}

func (b *boundedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.ToValidUTF8(b.buf.String(), "\uFFFD")
}

// runHookCommand runs argv with no shell, in a clean environment holding only env
// (plus a fixed PATH, so that the hook's own scripts find the usual tools), in its
// own process group. At the timeout, or when ctx is done, the whole group is
// killed: a hook that starts ssh or a child script leaves nothing running.
func runHookCommand(ctx context.Context, argv []string, env map[string]string, timeout time.Duration) hookResult {
	start := time.Now()
	res := hookResult{ExitCode: -1}
	if len(argv) == 0 {
		res.Result, res.Err = HookFailed, "empty command"
		return res
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = hookEnv(env)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout := &boundedBuffer{max: MaxHookOutput}
	stderr := &boundedBuffer{max: MaxHookOutput}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	// A grandchild that keeps the pipes open after the group is killed (it moved
	// to a group of its own) must not hold the run forever.
	cmd.WaitDelay = hookKillGrace
	if err := cmd.Start(); err != nil {
		res.Result, res.Err, res.Duration = HookFailed, "start: "+err.Error(), time.Since(start)
		return res
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	var err error
	killed := ""
	select {
	case err = <-done:
	case <-timer.C:
		killed = fmt.Sprintf("timed out after %s; process group killed", timeout)
	case <-ctx.Done():
		killed = "stopped (" + context.Cause(ctx).Error() + "); process group killed"
	}
	if killed != "" {
		// The negative pid names the process group (Setpgid made the hook its leader).
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		err = <-done
	} else {
		// The hook exited: anything it left running in its group goes too.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	res.Duration = time.Since(start)
	res.Stdout, res.Stderr = stdout.String(), stderr.String()
	res.Truncated = stdout.dropped || stderr.dropped
	if cmd.ProcessState != nil {
		res.ExitCode = cmd.ProcessState.ExitCode()
	}
	switch {
	case killed != "":
		res.Result, res.Err = HookTimeout, killed
	case err != nil && !errors.Is(err, exec.ErrWaitDelay):
		res.Result, res.Err = HookFailed, err.Error()
	default:
		res.Result = HookOK
	}
	return res
}

// hookEnv is a hook's whole environment: nothing of the daemon's (its cloud
// credentials must not leak into a script), only PATH and the given variables.
func hookEnv(env map[string]string) []string {
	out := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		out = append(out, k+"="+env[k])
	}
	return out
}
