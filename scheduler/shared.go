package scheduler

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/imagekeeper/imagekeeper/cloud"
	"github.com/imagekeeper/imagekeeper/policy"
	"github.com/imagekeeper/imagekeeper/store"
)

// Defaults of SharedOptions and RunnerOptions fields left zero.
const (
	// DefaultPollInterval is the first wait before an image (or a snapshot
	// deletion) is polled: a real cloud makes a small image active in about 7 s and
	// Cinder deletes a snapshot in about 2 s, and a first poll at a fixed 10 s made a
	// run take 11-12 s. A poll round is one batched listing per slot, so polling
	// early costs little; the wait grows by half each round (2, 3, 4.5, 6.75 s...)
	// up to DefaultMaxPollInterval.
	DefaultPollInterval    = 2 * time.Second
	DefaultMaxPollInterval = 2 * time.Minute
	DefaultWaitTimeout     = 2 * time.Hour
	DefaultConcurrency     = 4
)

// SharedOptions configures the resources every component of a process shares.
type SharedOptions struct {
	// Cloud is the cloud to work in; required.
	Cloud cloud.Cloud
	// Store is the lineage; required.
	Store *store.Store
	// Limits bound concurrency and the request rate across every component.
	Limits policy.Limits
	// Logger receives the components' logs; discarded when nil.
	Logger *slog.Logger
	// Metrics is fed slot outcomes, skips, image and deletion results; nil for none.
	Metrics *Metrics
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// Sleep waits for a duration or until ctx is done; tests inject it so that the
	// spread, rate limit and poll backoff do not wait for real.
	Sleep func(ctx context.Context, d time.Duration) error
	// PollInterval is the first wait between polls; it grows by half each round up
	// to MaxPollInterval (nextPoll).
	PollInterval    time.Duration
	MaxPollInterval time.Duration
	// DefaultWaitTimeout applies when a policy has none (and to resumed waits of a
	// policy no longer in the config).
	DefaultWaitTimeout time.Duration
}

// Shared is what the components of one process share: the cloud behind the
// request-rate token bucket, the worker slots, the per-policy lock (a backup run,
// a prune, a reconcile fix and a drill's pick of one policy never overlap) and the
// per-server lock (no two createImage calls on one server), the image rows a wait
// has claimed, the server inventory of a slot instant, and the store, metrics,
// clock and logger. The backup Runner, Retention (and its pruner), the Reconciler,
// the LateWatcher and the Driller each receive the one Shared of the process: its
// locks and claims are what keep them apart, so two Shareds on one lineage would
// not be.
type Shared struct {
	opts    SharedOptions
	cloud   cloud.Cloud
	store   *store.Store
	log     *slog.Logger
	metrics *Metrics
	now     func() time.Time
	sleep   func(context.Context, time.Duration) error
	bucket  *tokenBucket
	workers *semaphore
	servers keyedLocks
	pols    keyedLocks
	// inventory shares one server listing between the runs of a slot instant.
	inventory inventory

	mu      sync.Mutex
	waiting map[int64]bool // image rows a wait of this process is watching
	// lateWake wakes the LateWatcher when an image enters its late window.
	lateWake chan struct{}
}

// NewShared returns the shared resources of a process.
func NewShared(opts SharedOptions) *Shared {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Sleep == nil {
		opts.Sleep = sleepCtx
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = DefaultPollInterval
	}
	if opts.MaxPollInterval <= 0 {
		opts.MaxPollInterval = DefaultMaxPollInterval
	}
	if opts.MaxPollInterval < opts.PollInterval {
		opts.MaxPollInterval = opts.PollInterval
	}
	if opts.DefaultWaitTimeout <= 0 {
		opts.DefaultWaitTimeout = DefaultWaitTimeout
	}
	sh := &Shared{
		opts:     opts,
		cloud:    opts.Cloud,
		store:    opts.Store,
		log:      opts.Logger,
		metrics:  opts.Metrics,
		now:      opts.Now,
		sleep:    opts.Sleep,
		waiting:  map[int64]bool{},
		lateWake: make(chan struct{}, 1),
	}
	sh.bucket = newTokenBucket(opts.Limits.RequestsPerSecond, sh.now, sh.sleep)
	sh.workers = newSemaphore(concurrency(opts.Limits))
	return sh
}

func concurrency(l policy.Limits) int {
	if l.Concurrency > 0 {
		return l.Concurrency
	}
	return DefaultConcurrency
}

// SetLimits applies new limits (a config reload) to the calls made from now on.
func (sh *Shared) SetLimits(l policy.Limits) {
	sh.bucket.setRate(l.RequestsPerSecond)
	sh.workers.resize(concurrency(l))
}

// Cloud returns the shared cloud: every call takes a token of the shared request
// rate, so that prunes, reconciles and drills share the limits with backup runs.
func (sh *Shared) Cloud() cloud.Cloud { return limitedCloud{inner: sh.cloud, bucket: sh.bucket} }

// countedCloud is Cloud counting the calls made through it in c.
func (sh *Shared) countedCloud(c *callCounter) limitedCloud {
	return limitedCloud{inner: sh.cloud, bucket: sh.bucket, counter: c}
}

// AcquireWorker takes one of the Limits.Concurrency worker slots shared by every
// component, for work of the named policy (slots are shared fairly between
// policies); the returned func gives it back.
func (sh *Shared) AcquireWorker(ctx context.Context, policy string) (release func(), err error) {
	return sh.workers.acquire(ctx, policy)
}

// LockPolicy serialises backup runs and prunes of one policy: a run holds it while it
// makes and waits for images, and a prune holds it too.
func (sh *Shared) LockPolicy(ctx context.Context, name string) (unlock func(), err error) {
	return sh.pols.lock(ctx, name)
}

// withPolicyLock runs f holding the policy's lock.
func (sh *Shared) withPolicyLock(ctx context.Context, name string, f func() error) error {
	return sh.withPolicyLockYielding(ctx, name, func(<-chan struct{}) error { return f() })
}

// withPolicyLockYielding runs f holding the policy's lock; wanted is closed once
// anything else (a backup run) waits for that lock, so that f can leave slow work
// for later.
func (sh *Shared) withPolicyLockYielding(ctx context.Context, name string, f func(wanted <-chan struct{}) error) error {
	unlock, wanted, err := sh.pols.lockYielding(ctx, name)
	if err != nil {
		return err
	}
	defer unlock()
	return f(wanted)
}

// claim marks rows as watched by a wait of this process and returns the ones it
// got; rows that another wait already watches are left to it.
func (sh *Shared) claim(rows []store.Image) []store.Image {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	var mine []store.Image
	for _, im := range rows {
		if sh.waiting[im.Row] {
			continue
		}
		sh.waiting[im.Row] = true
		mine = append(mine, im)
	}
	return mine
}

// unclaim gives back rows that claim returned.
func (sh *Shared) unclaim(rows []store.Image) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	for _, im := range rows {
		delete(sh.waiting, im.Row)
	}
}

// unclaimRows is unclaim by row id.
func (sh *Shared) unclaimRows(ids []int64) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	for _, id := range ids {
		delete(sh.waiting, id)
	}
}

// waitTimeout is p's wait_timeout, DefaultWaitTimeout when it has none (or p is
// nil: a policy no longer in the config).
func (sh *Shared) waitTimeout(p *policy.Policy) time.Duration {
	if p != nil && p.Image != nil && p.Image.WaitTimeout > 0 {
		return p.Image.WaitTimeout
	}
	return sh.opts.DefaultWaitTimeout
}

// wakeLate tells the LateWatcher that a row entered its late window.
func (sh *Shared) wakeLate() {
	select {
	case sh.lateWake <- struct{}{}:
	default:
	}
}

// listAll lists every server of the project inside a worker slot (taken in the
// name of policy), for the inventory.
func (sh *Shared) listAll(cl cloud.Cloud, policy string) func(context.Context) ([]cloud.Server, error) {
	return func(ctx context.Context) ([]cloud.Server, error) {
		release, err := sh.workers.acquire(ctx, policy)
		if err != nil {
			return nil, err
		}
		defer release()
		return cl.ListServers(ctx, cloud.Selector{})
	}
}
