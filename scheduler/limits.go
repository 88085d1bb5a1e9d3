package scheduler

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/imagekeeper/imagekeeper/cloud"
)

// sleepCtx waits for d or until ctx is done. It is the default Sleep of a Runner;
// tests inject their own so that nothing real waits.
func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// tokenBucket limits the rate of cloud calls: rate tokens a second, at most burst
// saved up. It is a golang.org/x/time/rate Limiter driven by the Runner's clock and
// sleep (tests inject a fake clock), doing what Limiter.Wait does: reserve a token
// (waiting callers are served in arrival order, without a background goroutine),
// fail at once when the context's deadline comes before the token would, sleep
// until the reservation is due, and hand the token back when the wait is cancelled.
type tokenBucket struct {
	lim   *rate.Limiter
	now   func() time.Time
	sleep func(context.Context, time.Duration) error
}

func newTokenBucket(rps float64, now func() time.Time, sleep func(context.Context, time.Duration) error) *tokenBucket {
	b := &tokenBucket{lim: rate.NewLimiter(limitOf(rps), burstOf(rps)), now: now, sleep: sleep}
	return b
}

// limitOf is the Limiter's rate for requests_per_second; <= 0 means unlimited.
func limitOf(rps float64) rate.Limit {
	if rps <= 0 {
		return rate.Inf
	}
	return rate.Limit(rps)
}

// burstOf is one second's worth of calls: it smooths a slot's first calls without
// letting a large fleet start with a storm.
func burstOf(rps float64) int {
	return int(math.Max(1, math.Ceil(rps)))
}

// setRate changes the rate (a reload of the limits); saved tokens are capped by the
// new burst.
func (b *tokenBucket) setRate(rps float64) {
	now := b.now()
	b.lim.SetLimitAt(now, limitOf(rps))
	b.lim.SetBurstAt(now, burstOf(rps))
}

// errRateDeadline is returned when ctx's deadline comes before the next token.
var errRateDeadline = errors.New("request rate: the next token comes after the context's deadline")

// Wait takes one token, sleeping until it is available or ctx is done.
func (b *tokenBucket) Wait(ctx context.Context) error {
	if b == nil {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	now := b.now()
	r := b.lim.ReserveN(now, 1)
	if !r.OK() {
		return fmt.Errorf("request rate: a call needs more than the burst of %d", b.lim.Burst())
	}
	wait := r.DelayFrom(now)
	if wait <= 0 {
		return nil
	}
	if dl, ok := ctx.Deadline(); ok && dl.Before(now.Add(wait)) {
		r.CancelAt(now)
		return fmt.Errorf("%w (wait %s)", errRateDeadline, wait)
	}
	if err := b.sleep(ctx, wait); err != nil {
		r.CancelAt(b.now()) // hand the reservation back
		return err
	}
	return nil
}

// semaphore bounds concurrent workers. Its capacity can change on reload: a new
// channel serves new acquisitions and each release goes back to the channel it came
// from.
type semaphore struct {
	mu sync.Mutex
	ch chan struct{}
}

func newSemaphore(n int) *semaphore {
	s := &semaphore{}
	s.resize(n)
	return s
}

func (s *semaphore) resize(n int) {
	if n <= 0 {
		n = 1
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ch == nil || cap(s.ch) != n {
		s.ch = make(chan struct{}, n)
	}
}

// acquire takes a worker slot; the returned func gives it back.
func (s *semaphore) acquire(ctx context.Context) (func(), error) {
	s.mu.Lock()
	ch := s.ch
	s.mu.Unlock()
	select {
	case ch <- struct{}{}:
		return func() { <-ch }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// keyedLocks holds one context-aware mutex per key (a server id, a policy name),
// created on demand and dropped when nobody holds or waits for it.
type keyedLocks struct {
	mu sync.Mutex
	m  map[string]*keyedLock
}

type keyedLock struct {
	ch   chan struct{}
	refs int
}

// lock takes the key's lock; the returned func releases it.
func (k *keyedLocks) lock(ctx context.Context, key string) (func(), error) {
	k.mu.Lock()
	if k.m == nil {
		k.m = map[string]*keyedLock{}
	}
	l := k.m[key]
	if l == nil {
		l = &keyedLock{ch: make(chan struct{}, 1)}
		k.m[key] = l
	}
	l.refs++
	k.mu.Unlock()
	drop := func() {
		k.mu.Lock()
		l.refs--
		if l.refs == 0 {
			delete(k.m, key)
		}
		k.mu.Unlock()
	}
	select {
	case l.ch <- struct{}{}:
		return func() { <-l.ch; drop() }, nil
	case <-ctx.Done():
		drop()
		return nil, ctx.Err()
	}
}

// spreadOffset is the stable delay of a server inside a policy's spread window: the
// same server and policy always start at the same offset after the slot, and
// different servers are spread evenly.
func spreadOffset(policyName, serverID string, spread time.Duration) time.Duration {
	if spread <= 0 {
		return 0
	}
	h := fnv.New64a()
	h.Write([]byte(policyName))
	h.Write([]byte{0})
	h.Write([]byte(serverID))
	return time.Duration(h.Sum64() % uint64(spread))
}

// callCounter counts the cloud calls of one run, by operation.
type callCounter struct {
	total atomic.Int64
}

// limitedCloud is the cloud as a Runner uses it: every call first takes a token from
// the Runner's shared bucket, and is counted for the run that makes it.
type limitedCloud struct {
	inner   cloud.Cloud
	bucket  *tokenBucket
	counter *callCounter
}

var _ cloud.Cloud = limitedCloud{}

func (c limitedCloud) take(ctx context.Context) error {
	if c.counter != nil {
		c.counter.total.Add(1)
	}
	return c.bucket.Wait(ctx)
}

// ListServers implements cloud.Cloud.
func (c limitedCloud) ListServers(ctx context.Context, sel cloud.Selector) ([]cloud.Server, error) {
	if err := c.take(ctx); err != nil {
		return nil, err
	}
	return c.inner.ListServers(ctx, sel)
}

// GetServer implements cloud.Cloud.
func (c limitedCloud) GetServer(ctx context.Context, id string) (cloud.Server, error) {
	if err := c.take(ctx); err != nil {
		return cloud.Server{}, err
	}
	return c.inner.GetServer(ctx, id)
}

// CreateImage implements cloud.Cloud.
func (c limitedCloud) CreateImage(ctx context.Context, serverID, name string, metadata map[string]string) (string, error) {
	if err := c.take(ctx); err != nil {
		return "", err
	}
	return c.inner.CreateImage(ctx, serverID, name, metadata)
}

// GetImage implements cloud.Cloud.
func (c limitedCloud) GetImage(ctx context.Context, id string) (cloud.Image, error) {
	if err := c.take(ctx); err != nil {
		return cloud.Image{}, err
	}
	return c.inner.GetImage(ctx, id)
}

// ListImages implements cloud.Cloud.
func (c limitedCloud) ListImages(ctx context.Context, properties map[string]string) ([]cloud.Image, error) {
	if err := c.take(ctx); err != nil {
		return nil, err
	}
	return c.inner.ListImages(ctx, properties)
}

// DeleteImage implements cloud.Cloud.
func (c limitedCloud) DeleteImage(ctx context.Context, id string) error {
	if err := c.take(ctx); err != nil {
		return err
	}
	return c.inner.DeleteImage(ctx, id)
}

// GetSnapshot implements cloud.Cloud.
func (c limitedCloud) GetSnapshot(ctx context.Context, id string) (cloud.Snapshot, error) {
	if err := c.take(ctx); err != nil {
		return cloud.Snapshot{}, err
	}
	return c.inner.GetSnapshot(ctx, id)
}

// ListSnapshots implements cloud.Cloud.
func (c limitedCloud) ListSnapshots(ctx context.Context) ([]cloud.Snapshot, error) {
	if err := c.take(ctx); err != nil {
		return nil, err
	}
	return c.inner.ListSnapshots(ctx)
}

// DeleteSnapshot implements cloud.Cloud.
func (c limitedCloud) DeleteSnapshot(ctx context.Context, id string) error {
	if err := c.take(ctx); err != nil {
		return err
	}
	return c.inner.DeleteSnapshot(ctx, id)
}
