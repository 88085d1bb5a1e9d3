// Package storetest holds the test fixtures every package's tests share: one
// manual clock for the store, the cloud fakes and the scheduler, and helpers that
// open a store in a temporary directory and close it when the test ends.
//
// It is imported by external tests only (package store_test, scheduler, cmd); the
// store package's internal tests cannot import it, since it imports store.
package storetest

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/imagekeeper/imagekeeper/store"
)

// Clock is a manual clock. Now reads it, Advance and Set move it, and Sleep moves
// it by the duration instead of waiting, so that a Runner's polls and backoffs take
// no real time. It is safe for concurrent use; its zero value reads the zero time.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock returns a Clock reading t.
func NewClock(t time.Time) *Clock { return &Clock{now: t} }

// Now returns the clock's current instant; pass the method value wherever a
// func() time.Time is wanted (store.Options.Now, a fake cloud's Now).
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward by d (back, if d is negative).
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// Set moves the clock to t.
func (c *Clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

// Sleep is a virtual sleep with the signature of a Runner's Sleep: it returns
// ctx's error without moving the clock when ctx is done, as a real sleep would
// return at once, and otherwise advances the clock by d and returns nil.
func (c *Clock) Sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d > 0 {
		c.Advance(d)
	}
	return nil
}

// MustOpen opens a store named lineage.db in a fresh temporary directory, reading
// clock (the wall clock when nil), and closes it when the test ends.
func MustOpen(tb testing.TB, clock *Clock) *store.Store {
	tb.Helper()
	return MustOpenAt(tb, filepath.Join(tb.TempDir(), "lineage.db"), clock)
}

// MustOpenAt is MustOpen at a given path, for tests that reopen a database or
// inspect its file.
func MustOpenAt(tb testing.TB, path string, clock *Clock) *store.Store {
	tb.Helper()
	var opts store.Options
	if clock != nil {
		opts.Now = clock.Now
	}
	s, err := store.Open(context.Background(), path, opts)
	if err != nil {
		tb.Fatalf("open store %s: %v", path, err)
	}
	tb.Cleanup(func() {
		if err := s.Close(); err != nil {
			tb.Errorf("close store %s: %v", path, err)
		}
	})
	return s
}
