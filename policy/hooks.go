package policy

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	ttemplate "text/template"
	"time"
)

// Hook limits.
const (
	// DefaultHookTimeout applies to a hook without a timeout.
	DefaultHookTimeout = 2 * time.Minute
	// MaxHookTimeout bounds a hook's timeout: a freeze that needs longer than this
	// to be taken is not a freeze.
	MaxHookTimeout = 10 * time.Minute
	// MaxFrozen is the documented maximum time between the end of a successful pre
	// hook and the start of its post hook. Post runs as soon as the snapshot's point
	// in time is taken; if that is not seen within MaxFrozen (a cloud that never
	// moves the task state on), post runs anyway and the image is recorded
	// crash-consistent: an application must never stay frozen because of us.
	MaxFrozen = 15 * time.Minute
	// maxHookArgs bounds a hook's argv.
	maxHookArgs = 64
)

// What a failed pre hook does (image.hooks.pre.on_failure).
const (
	// OnFailureSkip: no image for the server in this slot (recorded and counted).
	OnFailureSkip = "skip"
	// OnFailureContinue: the image is made anyway and recorded crash-consistent.
	OnFailureContinue = "continue"
)

// Hooks are a policy's commands run on the ops host around each server's snapshot
// (image.hooks): Pre just before createImage, Post as soon as the snapshot's point
// in time is taken. Either may be nil.
type Hooks struct {
	Pre  *Hook `json:",omitempty"`
	Post *Hook `json:",omitempty"`
}

// Hook is one command: an argv (no shell) whose elements are templates rendered
// with the same data and helpers as image names.
type Hook struct {
	// Command is the argv's template sources; Command[0] is an absolute path.
	Command []string
	Timeout time.Duration
	// OnFailure is OnFailureSkip or OnFailureContinue (pre only; "" for post).
	OnFailure string `json:",omitempty"`

	argv []*ttemplate.Template
}

// Argv renders the command for one server and slot. Every error wraps ErrTemplate.
func (h *Hook) Argv(d TemplateData) ([]string, error) {
	ts := h.argv
	if ts == nil {
		// A Hook built as a literal (tests in other packages).
		for _, src := range h.Command {
			t, err := parseTemplate(src)
			if err != nil {
				return nil, fmt.Errorf("%w: hook command: %v", ErrTemplate, err)
			}
			ts = append(ts, t)
		}
	}
	out := make([]string, 0, len(ts))
	for i, t := range ts {
		s, err := execute(t, d)
		if err != nil {
			return nil, fmt.Errorf("%w: hook command[%d]: %v", ErrTemplate, i, err)
		}
		if err := checkArg(s); err != nil {
			return nil, fmt.Errorf("%w: hook command[%d]: %v", ErrTemplate, i, err)
		}
		out = append(out, s)
	}
	return out, nil
}

// checkArg rejects what no argv element can carry.
func checkArg(s string) error {
	if strings.ContainsRune(s, 0) {
		return errors.New("rendered argument contains a NUL byte")
	}
	return nil
}

// CheckExecutable reports whether path is an existing regular file that someone may
// execute. The daemon checks every hook's command when it starts and on reload: a
// hook that cannot run would turn every image of the policy into a skip.
func CheckExecutable(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("hook command %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("hook command %s is not a regular file", path)
	}
	if fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("hook command %s is not executable", path)
	}
	return nil
}

// CheckHooks checks that the command of every hook of every policy is an existing
// executable file, and returns one error per problem, naming the policy.
func (c *Config) CheckHooks() []error {
	var errs []error
	for _, p := range c.Policies {
		if p == nil || p.Image == nil || p.Image.Hooks == nil {
			continue
		}
		for _, h := range []struct {
			name string
			hook *Hook
		}{{"pre", p.Image.Hooks.Pre}, {"post", p.Image.Hooks.Post}} {
			if h.hook == nil {
				continue
			}
			if err := CheckExecutable(h.hook.Command[0]); err != nil {
				errs = append(errs, fmt.Errorf("policy %q: image.hooks.%s: %w", p.Name, h.name, err))
			}
		}
	}
	return errs
}

// compileHooks checks image.hooks. ok is false when it reported a problem.
func (l *loader) compileHooks(rh *rawHooks, path string, data TemplateData) (*Hooks, bool) {
	hasPre, hasPost := l.nodes[path+".pre"] != nil, l.nodes[path+".post"] != nil
	if !hasPre && !hasPost {
		return nil, true
	}
	hs := &Hooks{}
	ok := true
	if !hasPre || !hasPost {
		// A pre without a post leaves the application frozen; a post without a pre
		// thaws what nobody froze.
		l.errorf(path, "needs both pre and post: the post hook undoes what the pre hook does")
		ok = false
	}
	var hok bool
	if hasPre {
		hs.Pre, hok = l.compileHook(&rh.Pre, path+".pre", data, true)
		ok = ok && hok
	}
	if hasPost {
		hs.Post, hok = l.compileHook(&rh.Post, path+".post", data, false)
		ok = ok && hok
	}
	if !ok {
		return nil, false
	}
	return hs, true
}

func (l *loader) compileHook(rh *rawHook, path string, data TemplateData, pre bool) (*Hook, bool) {
	h := &Hook{Timeout: DefaultHookTimeout}
	ok := true
	if d, set := l.duration(path+".timeout", rh.Timeout, DefaultHookTimeout); set {
		if d < time.Second || d > MaxHookTimeout {
			l.errorf(path+".timeout", "must be between 1s and %s, got %s", formatDuration(MaxHookTimeout), rh.Timeout)
			ok = false
		}
		h.Timeout = d
	}
	switch {
	case l.bad[path+".on_failure"]:
		ok = false
	case !pre && rh.OnFailure != "":
		l.errorf(path+".on_failure", "applies to pre only: a failed post is recorded, there is nothing left to skip")
		ok = false
	case pre && rh.OnFailure == "":
		l.errorf(path+".on_failure", "is required: skip (no image when pre fails) or continue (a crash-consistent image)")
		ok = false
	case pre && rh.OnFailure != OnFailureSkip && rh.OnFailure != OnFailureContinue:
		l.errorf(path+".on_failure", "unknown value %q; allowed values are skip and continue", rh.OnFailure)
		ok = false
	}
	h.OnFailure = rh.OnFailure
	if l.bad[path+".command"] {
		return nil, false
	}
	switch {
	case len(rh.Command) == 0:
		l.errorf(path+".command", "is required: a list, the program's absolute path then its arguments (no shell)")
		return nil, false
	case len(rh.Command) > maxHookArgs:
		l.errorf(path+".command", "has %d elements; at most %d allowed", len(rh.Command), maxHookArgs)
		return nil, false
	}
	for i, src := range rh.Command {
		ep := fmt.Sprintf("%s.command[%d]", path, i)
		if i == 0 {
			// The program is a literal path: a template there would let a server's
			// name choose what runs.
			if strings.Contains(src, "{{") {
				l.errorf(ep, "must be a literal absolute path, not a template")
				ok = false
				continue
			}
			if !filepath.IsAbs(src) || filepath.Clean(src) != src {
				l.errorf(ep, "must be a clean absolute path such as /usr/local/lib/imagekeeper/freeze, got %q", src)
				ok = false
				continue
			}
		}
		t, err := parseTemplate(src)
		if err != nil {
			l.errorf(ep, "invalid template: %v", err)
			ok = false
			continue
		}
		out, err := execute(t, data)
		if err != nil {
			l.errorf(ep, "template fails on a sample server: %v", err)
			ok = false
			continue
		}
		if err := checkArg(out); err != nil {
			l.errorf(ep, "on a sample server: %v", err)
			ok = false
			continue
		}
		h.argv = append(h.argv, t)
	}
	h.Command = append([]string(nil), rh.Command...)
	if !ok {
		return nil, false
	}
	return h, true
}
