package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"sort"
	"strings"

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
}

// wire loads the policy file that --config names, picks the policies, and opens
// what o asks for, in that order: a typo in --policy fails before the lineage is
// created or the cloud asked. Close the result when done.
func (c *common) wire(ctx context.Context, o wireOptions) (*wiring, error) {
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
			if w.lock, err = acquireLock(cfg.State); err != nil {
				return nil, withExitCode(exitFailure, fmt.Errorf("%w; stop it first, or let it do the work", err))
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

// close closes the lineage if wire opened it. A read-only command has nothing to
// lose, and a writing one has committed each change as it made it, so a failed
// close has nothing left to report.
func (w *wiring) close() {
	if w.store != nil {
		_ = w.store.Close()
	}
	if w.lock != nil {
		_ = w.lock.Release()
	}
}

// runner returns a backup runner on the wired cloud and lineage with the policy
// file's limits; o sets the rest. Its log lines name the command that made them.
func (w *wiring) runner(o scheduler.RunnerOptions) *scheduler.Runner {
	o.Cloud, o.Store, o.Limits = w.cloud, w.store, w.cfg.Limits
	o.Logger = w.log.With("command", w.command)
	return scheduler.NewRunner(o)
}

// wireConfig loads the policy file for a command that does work. Every validation
// problem is printed on stderr as FILE:LINE:COL: ... (exit 1); an unreadable file is
// exit 2, as in validate.
func wireConfig(m *Main, path string) (*policy.Config, error) {
	cfg, err := policy.Load(path)
	var perrs policy.Errors
	switch {
	case errors.As(err, &perrs):
		for _, e := range perrs {
			fmt.Fprintln(m.Stderr, e.Error())
		}
		return nil, withExitCode(exitFailure, fmt.Errorf("%s is not valid (%s; see above)", path, plural(len(perrs), "problem", "problems")))
	case errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission):
		return nil, withExitCode(exitUsage, err)
	case err != nil:
		return nil, withExitCode(exitFailure, err)
	}
	return cfg, nil
}

// wirePolicy finds a policy by name; an unknown name is a usage error that lists
// the names the file has.
func wirePolicy(cfg *policy.Config, name string) (*policy.Policy, error) {
	var names []string
	for _, p := range cfg.Policies {
		if p.Name == name {
			return p, nil
		}
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
// Tests replace it to put a fake in.
var wireCloud = func(ctx context.Context, cfg *policy.Config, log *slog.Logger, observe func(openstack.Request)) (cloud.Cloud, error) {
	// Glance answers 25 images a page unless asked for more; a wait polls every image
	// of a slot in one listing, so ask for the usual api_limit_max (clouds cap it).
	c, err := openstack.New(ctx, openstack.Options{CloudName: cfg.Cloud, Observe: observe, Logger: log, PageSize: 1000})
	if err != nil {
		return nil, fmt.Errorf("connect to cloud %q: %w", cfg.Cloud, err)
	}
	return c, nil
}
