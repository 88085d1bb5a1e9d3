package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/imagekeeper/imagekeeper/cloud"
	"github.com/imagekeeper/imagekeeper/cloud/openstack"
	"github.com/imagekeeper/imagekeeper/policy"
	"github.com/imagekeeper/imagekeeper/scheduler"
	"github.com/imagekeeper/imagekeeper/store"
)

// wiring is what a command's work needs: the policy file, the policies it acts on
// and, when asked for, the lineage and the cloud. common.wire opens them in one
// order for every command, so that the same bad input fails the same way in each.
type wiring struct {
	cfg      *policy.Config
	policies []*policy.Policy // the one --policy names, or every policy in the file
	store    *store.Store     // nil unless wireOptions.store
	lock     *dbLock          // nil unless wireOptions.exclusive
	cloud    cloud.Cloud      // nil unless wireOptions.cloud
	log      *slog.Logger
	command  string
	// daemon is set when the command runs inside the daemon for a control-socket
	// client: the store and cloud are the daemon's, and close leaves them open.
	daemon *daemonEnv
}

// daemonEnv is what a command run through the control socket borrows from the
// daemon: its current config, lineage, cloud, shared resources (with the per-policy
// and per-server locks every run, prune and reconcile of the daemon takes) and
// backup runner.
type daemonEnv struct {
	config func() *policy.Config
	// cfgs owns the daemon's config in force: retention asks it by name.
	cfgs   *policy.Coordinator
	store  *store.Store
	cloud  cloud.Cloud
	shared *scheduler.Shared
	runner *scheduler.Runner
	// version and revision are the daemon's build; started is when it started.
	version, revision string
	started           time.Time
}

// wireOptions says what a command needs besides the policy file.
type wireOptions struct {
	policy string // a --policy value; "" means every policy
	store  bool   // open the lineage (creating it if need be)
	// exclusive takes the database lock the daemon holds, for a command that
	// changes the cloud or the lineage: the per-policy locks and row claims that keep
	// runs, prunes and reconciles apart live in one process, so two processes on one
	// database must never both be writing.
	exclusive bool
	cloud     bool // connect to the cloud
	// lineageOnly is for the commands that only read the lineage (images, history,
	// why, status): they need no valid policy file. With --state they read that
	// lineage, and the policy file only if it is valid and names the same one; with
	// a policy file that does not validate, they read the lineage its state: names
	// and say so. cfg is nil when no valid policy file goes with the lineage.
	lineageOnly bool
}

// wire loads the policy file that --config names, picks the policies, and opens
// what o asks for, in that order: a typo in --policy fails before the lineage is
// created or the cloud asked. Close the result when done.
func (c *common) wire(ctx context.Context, o wireOptions) (*wiring, error) {
	if d := c.m.daemon; d != nil {
		return c.wireDaemon(d, o)
	}
	if o.lineageOnly {
		return c.wireLineage(ctx, o)
	}
	cfg, err := wireConfig(c.m, c.config)
	if err != nil {
		return nil, err
	}
	w := &wiring{cfg: cfg, policies: cfg.Policies, log: c.log, command: c.name}
	if o.policy != "" {
		p, err := wirePolicy(cfg, o.policy)
		if err != nil {
			return nil, err
		}
		w.policies = []*policy.Policy{p}
	}
	if o.store {
		if o.exclusive {
			// Create the state directory as the daemon does: a first `run` before
			// the daemon ever started must work, not fail on the lock file.
			if err := os.MkdirAll(filepath.Dir(cfg.State), 0o750); err != nil {
				return nil, withExitCode(exitFailure, fmt.Errorf("state directory of %s: %w", cfg.State, err))
			}
			if w.lock, err = acquireLock(cfg.State); errors.Is(err, errLocked) {
				return nil, withExitCode(exitFailure, fmt.Errorf("%w; stop it first, or let it do the work", err))
			} else if err != nil {
				return nil, withExitCode(exitFailure, err)
			}
		}
		if w.store, err = wireStore(ctx, cfg); err != nil {
			w.close()
			return nil, err
		}
	}
	if o.cloud {
		if w.cloud, err = wireCloud(ctx, cfg, c.log, nil); err != nil {
			w.close()
			return nil, err
		}
	}
	return w, nil
}

// wireLineage is wire for a command that only reads the lineage.
func (c *common) wireLineage(ctx context.Context, o wireOptions) (*wiring, error) {
	cfg, err := policy.Load(c.config)
	state := c.state
	var perrs policy.Errors
	switch {
	case err == nil:
		if state == "" {
			state = cfg.State
		} else if filepath.Clean(cfg.State) != filepath.Clean(state) {
			cfg = nil // the policy file is about another lineage
		}
	case state != "":
		cfg = nil // the policy file is optional with --state
	case errors.As(err, &perrs):
		state = policyFileState(c.config)
		fmt.Fprintf(c.m.Stderr, "imagekeeper %s: warning: %s does not validate (%s; imagekeeper validate shows them); reading the lineage it names, %s\n",
			c.name, c.config, plural(len(perrs), "problem", "problems"), state)
		cfg = nil
	default:
		return nil, wireConfigError(c.m, c.config, err)
	}
	w := &wiring{cfg: cfg, log: c.log, command: c.name}
	if cfg != nil {
		w.policies = cfg.Policies
	}
	if o.policy != "" && cfg != nil {
		// An unknown --policy is a usage error, not an empty table.
		if _, err := wirePolicy(cfg, o.policy); err != nil {
			return nil, err
		}
	}
	if w.store, err = openLineage(ctx, state); err != nil {
		return nil, err
	}
	if o.policy != "" && cfg == nil {
		if err := lineageHasPolicy(ctx, w.store, state, o.policy); err != nil {
			w.close()
			return nil, err
		}
	}
	return w, nil
}

// lineageHasPolicy checks --policy against the lineage when no policy file goes
// with it: a name the lineage has never recorded is a usage error.
func lineageHasPolicy(ctx context.Context, st *store.Store, state, name string) error {
	names, err := st.Policies(ctx)
	if err != nil {
		return err
	}
	if slices.Contains(names, name) {
		return nil
	}
	return usageError("no policy %q in the lineage %s (policies: %s)", name, state, orDash(strings.Join(names, ", ")))
}

// openLineage opens the lineage at path for reading. A missing directory is said
// plainly (the daemon has not run yet, or --state is wrong).
func openLineage(ctx context.Context, path string) (*store.Store, error) {
	if path == "" {
		return nil, usageError("no lineage: give --state PATH or a policy file with state:")
	}
	if _, err := os.Stat(filepath.Dir(path)); errors.Is(err, fs.ErrNotExist) {
		return nil, withExitCode(exitUsage, fmt.Errorf("lineage %s: directory %s does not exist", path, filepath.Dir(path)))
	}
	st, err := store.Open(ctx, path, store.Options{})
	if err != nil {
		return nil, withExitCode(exitFailure, fmt.Errorf("open lineage %s: %w", path, err))
	}
	return st, nil
}

// wireDaemon is wire inside the daemon: the policies come from the config the
// daemon runs now, and the rest is the daemon's.
func (c *common) wireDaemon(d *daemonEnv, o wireOptions) (*wiring, error) {
	cfg := d.config()
	if cfg == nil {
		return nil, withExitCode(exitFailure, errors.New("the daemon has no config loaded yet"))
	}
	w := &wiring{cfg: cfg, policies: cfg.Policies, log: c.log, command: c.name, daemon: d, store: d.store, cloud: d.cloud}
	if o.policy != "" {
		p, err := wirePolicy(cfg, o.policy)
		if err != nil {
			return nil, err
		}
		w.policies = []*policy.Policy{p}
	}
	return w, nil
}

// close closes the lineage if wire opened it. A read-only command has nothing to
// lose, and a writing one has committed each change as it made it, so a failed
// close has nothing left to report.
func (w *wiring) close() {
	if w.daemon != nil {
		return // the daemon's, not ours
	}
	if w.store != nil {
		_ = w.store.Close()
	}
	if w.lock != nil {
		_ = w.lock.Release()
	}
}

// configs returns the config owner that retention asks for a policy by name:
// inside the daemon the daemon's own, so that a reload between this command's
// wiring and its prune counts; otherwise one holding the file this command read.
func (w *wiring) configs() *policy.Coordinator {
	if w.daemon != nil && w.daemon.cfgs != nil {
		return w.daemon.cfgs
	}
	return policy.NewCoordinator(w.cfg)
}

// shared returns the shared resources on the wired cloud and lineage with the
// policy file's limits; o sets the rest. Their log lines name the command that made
// them.
//
// Inside the daemon they are the daemon's, whatever o says: their locks are what
// keep this command apart from the daemon's own runs, prunes and reconciles.
func (w *wiring) shared(o scheduler.SharedOptions) *scheduler.Shared {
	if w.daemon != nil {
		return w.daemon.shared
	}
	o.Cloud, o.Store, o.Limits = w.cloud, w.store, w.cfg.Limits
	o.Logger = w.log.With(scheduler.LogKeyCommand, w.command)
	return scheduler.NewShared(o)
}

// runner returns a backup runner on sh; inside the daemon, the daemon's runner.
func (w *wiring) runner(sh *scheduler.Shared) *scheduler.Runner {
	if w.daemon != nil {
		return w.daemon.runner
	}
	return scheduler.NewRunner(sh, scheduler.RunnerOptions{})
}

// wireConfig loads the policy file for a command that does work. Every validation
// problem is printed on stderr as FILE:LINE:COL: ... (exit 1); an unreadable file is
// exit 2, as in validate.
func wireConfig(m *Main, path string) (*policy.Config, error) {
	cfg, err := policy.Load(path)
	if err != nil {
		return nil, wireConfigError(m, path, err)
	}
	return cfg, nil
}

// wireConfigError is the error of a policy file that did not load: every
// validation problem printed on stderr (exit 1), or the reason it could not be
// read (exit 2).
func wireConfigError(m *Main, path string, err error) error {
	var perrs policy.Errors
	switch {
	case errors.As(err, &perrs):
		for _, e := range perrs {
			fmt.Fprintln(m.Stderr, e.Error())
		}
		return withExitCode(exitFailure, fmt.Errorf("%s is not valid (%s; see above)", path, plural(len(perrs), "problem", "problems")))
	case errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission):
		return withExitCode(exitUsage, err)
	}
	return withExitCode(exitFailure, err)
}

// wirePolicy finds a policy by name; an unknown name is a usage error that lists
// the names the file has.
func wirePolicy(cfg *policy.Config, name string) (*policy.Policy, error) {
	if p := cfg.Policy(name); p != nil {
		return p, nil
	}
	var names []string
	for _, p := range cfg.Policies {
		names = append(names, p.Name)
	}
	sort.Strings(names)
	return nil, usageError("no policy %q in %s (policies: %s)", name, cfg.Path, strings.Join(names, ", "))
}

// wireStore opens the lineage database the config names.
func wireStore(ctx context.Context, cfg *policy.Config) (*store.Store, error) {
	if cfg.State == "" {
		return nil, withExitCode(exitUsage, fmt.Errorf("%s: no state database configured (state:)", cfg.Path))
	}
	st, err := store.Open(ctx, cfg.State, store.Options{})
	if err != nil {
		return nil, err
	}
	return st, nil
}

// wireCloud opens the cloud the config names (a clouds.yaml entry; OS_CLOUD when the
// config names none). observe, when set, sees every HTTP exchange (metrics).
func wireCloud(ctx context.Context, cfg *policy.Config, log *slog.Logger, observe func(openstack.Request)) (cloud.Cloud, error) {
	// Glance answers 25 images a page unless asked for more; a wait polls every image
	// of a slot in one listing, so ask for the usual api_limit_max (clouds cap it).
	c, err := openstack.New(ctx, openstack.Options{CloudName: cfg.Cloud, Observe: observe, Logger: log, PageSize: 1000})
	if err != nil {
		return nil, fmt.Errorf("connect to the cloud: %w", err)
	}
	return c, nil
}
