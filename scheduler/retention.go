package scheduler

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	"github.com/imagekeeper/imagekeeper/policy"
)

// Retention applies the retention of a policy, by name, by the config in force at
// the moment it decides. It is the one way to prune: it takes the policy's lock (so
// no backup run of the policy is going), and only then asks the config owner for the
// policy; a policy that is absent or disabled then is not pruned at all. Nothing a
// run started with reaches it, so a reload while a slot is in flight (raised
// keep_last, a renamed, disabled or removed policy) is always honoured.
type Retention struct {
	sh   *Shared
	cfgs *policy.Coordinator
	log  *slog.Logger
	opts RetentionOptions

	mu sync.Mutex
	// due is the one "retention due" slot per policy: requests while one is due
	// merge into it, so a burst of runs costs one prune, not one each.
	due map[string]bool
	// active marks a policy whose worker is running; it takes what is due next.
	active map[string]bool
}

// RetentionOptions configure a Retention.
type RetentionOptions struct {
	// Go starts a background job: the daemon passes Scheduler.Go, so that requested
	// prunes run under the runs' context and the drain waits for them. Nil starts a
	// plain goroutine under context.Background.
	Go func(name string, fn func(ctx context.Context) error)
	// Prune are the options of requested prunes.
	Prune PruneOptions
	// Done, when set, is called after each requested prune of a policy (whatever it
	// decided); the daemon refreshes that policy's gauges with it.
	Done func(ctx context.Context, policy string)
}

// NewRetention returns the retention of the policies cfgs has, pruning on the
// process's shared resources (their policy locks keep it apart from backup runs).
func NewRetention(sh *Shared, cfgs *policy.Coordinator, opts RetentionOptions) *Retention {
	if opts.Go == nil {
		opts.Go = func(_ string, fn func(context.Context) error) {
			go func() { _ = fn(context.Background()) }()
		}
	}
	return &Retention{sh: sh, cfgs: cfgs, log: sh.log, opts: opts, due: map[string]bool{}, active: map[string]bool{}}
}

// Prune applies the named policy's retention now and returns what it decided and
// did. When the policy is absent from or disabled in the config in force once its
// lock is held, nothing is deleted and the report's Inactive says why.
func (rt *Retention) Prune(ctx context.Context, name string, opts PruneOptions) (*PruneReport, error) {
	unlock, wanted, err := rt.sh.pols.lockYielding(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("prune %s: %w", name, err)
	}
	defer unlock()
	opts.yield = wanted
	gen := rt.cfgs.Generation()
	p, ok := rt.cfgs.Policy(name)
	if !ok {
		why := "the policy is not in the config in force: a removed policy's images are never deleted"
		if rt.cfgs.Current().Policy(name) != nil {
			why = "the policy is disabled: a disabled policy's images are never deleted"
		}
		now := rt.sh.store.Now()
		return &PruneReport{Policy: name, DryRun: opts.DryRun, Inactive: why, Started: now, Finished: now,
			Counts: map[PruneAction]int{}}, nil
	}
	// Decided by the config of this generation; a reload before a deletion starts
	// stops the prune (work prunes again by the new config).
	if opts.InForce == nil {
		opts.InForce = func() bool { return rt.cfgs.Generation() == gen }
	}
	return prune(ctx, rt.sh, p, opts)
}

// Request marks the named policy's retention due and returns at once; a background
// job prunes it (by the config in force when it gets there). A request while one is
// due is merged into it.
func (rt *Retention) Request(name string) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if rt.due[name] {
		return
	}
	rt.due[name] = true
	if rt.active[name] {
		return // the running worker takes it after its current prune
	}
	rt.active[name] = true
	rt.opts.Go("retention of "+name, func(ctx context.Context) error { return rt.work(ctx, name) })
}

// work prunes name while a prune of it is due.
func (rt *Retention) work(ctx context.Context, name string) error {
	for {
		rt.mu.Lock()
		if !rt.due[name] || ctx.Err() != nil {
			// A request lost to a stopping process is made again by the next run.
			rt.due[name], rt.active[name] = false, false
			rt.mu.Unlock()
			return nil // each prune's failure is logged below
		}
		rt.due[name] = false
		rt.mu.Unlock()

		rep, err := rt.Prune(ctx, name, rt.opts.Prune)
		switch {
		case err != nil:
			if ctx.Err() == nil {
				rt.log.Warn("retention failed; the next run of the policy asks again", LogKeyPolicy, name, LogKeyErr, err)
			}
		case rep.Inactive != "":
			rt.log.Info("retention skipped: "+rep.Inactive, LogKeyPolicy, name)
		case rep.Superseded:
			// A reload replaced the config it decided by: decide again by the new one.
			rt.log.Info("retention stopped by a reload; deciding again by the config now in force", LogKeyPolicy, name)
			rt.mu.Lock()
			rt.due[name] = true
			rt.mu.Unlock()
		default:
			rt.log.Debug("retention done", LogKeyPolicy, name, "deleted", rep.Counts[PruneDeleted],
				"pending", rep.Counts[PrunePending], "deferred", rep.Counts[PruneDeferred],
				"refused", rep.Counts[PruneRefused])
		}
		if rt.opts.Done != nil {
			rt.opts.Done(ctx, name)
		}
	}
}
