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

// sleepCtx waits for d or until ctx is done. It is the default Sleep of Shared;
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
// saved up. It is a golang.org/x/time/rate Limiter driven by the Shared clock and
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

// semaphore bounds concurrent workers and shares them fairly between keys (the
// policies): a freed slot goes to the next key with a waiter, round-robin, and
// within a key to its longest waiter. With a hundred policies due at once, each
// policy's first server is served before any policy's second: a plain FIFO would
// serve whole policies one after another, and the last policy would wait for every
// other policy's servers. Its capacity can change on reload; slots already taken
// beyond a lower capacity are simply not handed out again.
type semaphore struct {
	mu     sync.Mutex
	cap    int
	used   int
	queues map[string][]*semWaiter
	ring   []string // keys with waiters, in round-robin order
	next   int      // index in ring of the key served next
}

type semWaiter struct {
	ch      chan struct{}
	granted bool
}

func newSemaphore(n int) *semaphore {
	s := &semaphore{queues: map[string][]*semWaiter{}}
	s.resize(n)
	return s
}

func (s *semaphore) resize(n int) {
	if n <= 0 {
		n = 1
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cap = n
	s.dispatchLocked()
}

// capacity returns how many slots there are.
func (s *semaphore) capacity() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cap
}

// acquire takes a worker slot for key; the returned func gives it back.
func (s *semaphore) acquire(ctx context.Context, key string) (func(), error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	if s.used < s.cap && len(s.ring) == 0 {
		s.used++
		s.mu.Unlock()
		return s.releaser(), nil
	}
	w := &semWaiter{ch: make(chan struct{})}
	if len(s.queues[key]) == 0 {
		s.ring = append(s.ring, key)
	}
	s.queues[key] = append(s.queues[key], w)
	s.mu.Unlock()
	select {
	case <-w.ch:
		return s.releaser(), nil
	case <-ctx.Done():
		s.mu.Lock()
		if w.granted {
			// Granted as the context ended: pass the slot on.
			s.used--
			s.dispatchLocked()
		} else {
			s.removeLocked(key, w)
		}
		s.mu.Unlock()
		return nil, ctx.Err()
	}
}

// releaser returns the func that gives one slot back, at most once.
func (s *semaphore) releaser() func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			s.used--
			s.dispatchLocked()
			s.mu.Unlock()
		})
	}
}

// dispatchLocked hands free slots to waiters, one key after another.
func (s *semaphore) dispatchLocked() {
	for s.used < s.cap && len(s.ring) > 0 {
		if s.next >= len(s.ring) {
			s.next = 0
		}
		key := s.ring[s.next]
		q := s.queues[key]
		w := q[0]
		q[0] = nil
		s.queues[key] = q[1:]
		w.granted = true
		s.used++
		close(w.ch)
		if len(s.queues[key]) == 0 {
			delete(s.queues, key)
			s.ring = append(s.ring[:s.next], s.ring[s.next+1:]...)
		} else {
			s.next++
		}
	}
}

// removeLocked drops a waiter that gave up.
func (s *semaphore) removeLocked(key string, w *semWaiter) {
	q := s.queues[key]
	for i, x := range q {
		if x == w {
			q = append(q[:i], q[i+1:]...)
			break
		}
	}
	if len(q) > 0 {
		s.queues[key] = q
		return
	}
	delete(s.queues, key)
	for i, k := range s.ring {
		if k == key {
			s.ring = append(s.ring[:i], s.ring[i+1:]...)
			if s.next > i {
				s.next--
			}
			break
		}
	}
}

// keyedLocks holds one context-aware mutex per key (a server id, a policy name),
// and tells a holder that asked (lockYielding) when someone else starts waiting.
type keyedLocks struct {
	mu sync.Mutex
	m  map[string]*keyedLock
}

type keyedLock struct {
	ch   chan struct{}
	refs int // the holder and the waiters
	// wanted is closed when a caller queues behind the current holder; nil while
	// nobody holds the lock.
	wanted chan struct{}
}

// lock takes the key's lock; the returned func releases it.
func (k *keyedLocks) lock(ctx context.Context, key string) (func(), error) {
	unlock, _, err := k.lockYielding(ctx, key)
	return unlock, err
}

// lockYielding takes the key's lock like lock, and also returns a channel that is
// closed as soon as another caller waits for the same key. A holder doing work
// that can be left for later (retention waiting for Cinder) watches it and lets
// go, so that a backup run never queues behind it.
func (k *keyedLocks) lockYielding(ctx context.Context, key string) (unlock func(), wanted <-chan struct{}, err error) {
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
	if l.wanted != nil {
		closeOnce(l.wanted)
	}
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
	case <-ctx.Done():
		drop()
		return nil, nil, ctx.Err()
	}
	k.mu.Lock()
	w := make(chan struct{})
	if l.refs > 1 {
		close(w) // others queued while this caller waited
	}
	l.wanted = w
	k.mu.Unlock()
	return func() {
		k.mu.Lock()
		l.wanted = nil
		k.mu.Unlock()
		<-l.ch
		drop()
	}, w, nil
}

// closeOnce closes ch unless it is closed already; callers hold keyedLocks.mu.
func closeOnce(ch chan struct{}) {
	select {
	case <-ch:
	default:
		close(ch)
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

// limitedCloud is the cloud as the components use it: every call first takes a token from
// the Shared bucket, and is counted for the run that makes it.
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

// CreateServer implements cloud.Cloud.
func (c limitedCloud) CreateServer(ctx context.Context, req cloud.BootRequest) (string, error) {
	if err := c.take(ctx); err != nil {
		return "", err
	}
	return c.inner.CreateServer(ctx, req)
}

// DeleteServer implements cloud.Cloud.
func (c limitedCloud) DeleteServer(ctx context.Context, id string) error {
	if err := c.take(ctx); err != nil {
		return err
	}
	return c.inner.DeleteServer(ctx, id)
}

// ConsoleOutput implements cloud.Cloud.
func (c limitedCloud) ConsoleOutput(ctx context.Context, id string, lines int) (string, error) {
	if err := c.take(ctx); err != nil {
		return "", err
	}
	return c.inner.ConsoleOutput(ctx, id, lines)
}

// GetVolume implements cloud.Cloud.
func (c limitedCloud) GetVolume(ctx context.Context, id string) (cloud.Volume, error) {
	if err := c.take(ctx); err != nil {
		return cloud.Volume{}, err
	}
	return c.inner.GetVolume(ctx, id)
}

// DeleteVolume implements cloud.Cloud.
func (c limitedCloud) DeleteVolume(ctx context.Context, id string) error {
	if err := c.take(ctx); err != nil {
		return err
	}
	return c.inner.DeleteVolume(ctx, id)
}
