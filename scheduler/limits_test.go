package scheduler

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/imagekeeper/imagekeeper/store/storetest"
)

// sleepLog is the shared test clock with a log of the sleeps asked of it.
type sleepLog struct {
	*storetest.Clock
	mu    sync.Mutex
	slept []time.Duration
}

func (l *sleepLog) Sleep(ctx context.Context, d time.Duration) error {
	l.mu.Lock()
	l.slept = append(l.slept, d)
	l.mu.Unlock()
	return l.Clock.Sleep(ctx, d)
}

func TestTokenBucketPacesCalls(t *testing.T) {
	ft := &sleepLog{Clock: storetest.NewClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))}
	b := newTokenBucket(10, ft.Now, ft.Sleep)
	ctx := context.Background()
	start := ft.Now()
	for i := 0; i < 30; i++ {
		if err := b.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// A burst of 10, then 20 more at 10 a second: 2 s, give or take a token.
	if got := ft.Now().Sub(start); got < 1900*time.Millisecond || got > 2100*time.Millisecond {
		t.Errorf("30 calls at 10/s with burst 10 took %v, want about 2s", got)
	}
	if len(ft.slept) != 20 {
		t.Errorf("slept %d times, want 20 (the burst is free)", len(ft.slept))
	}
	// Unlimited: no sleeping at all.
	ft.slept = nil
	u := newTokenBucket(0, ft.Now, ft.Sleep)
	for i := 0; i < 100; i++ {
		if err := u.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if len(ft.slept) != 0 {
		t.Errorf("unlimited bucket slept %d times", len(ft.slept))
	}
}

func TestTokenBucketCancelled(t *testing.T) {
	ft := &sleepLog{Clock: storetest.NewClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))}
	b := newTokenBucket(1, ft.Now, sleepCtx)
	ctx, cancel := context.WithCancel(context.Background())
	if err := b.Wait(ctx); err != nil { // the burst token
		t.Fatal(err)
	}
	cancel()
	if err := b.Wait(ctx); err == nil {
		t.Error("Wait on a cancelled context with no token returned nil")
	}
}

func TestTokenBucketHandsBackCancelledTokens(t *testing.T) {
	// The fake clock starts at the real time: the deadline check compares the
	// context's (real) deadline with the bucket's clock.
	ft := &sleepLog{Clock: storetest.NewClock(time.Now())}
	cancelled := errors.New("cancelled")
	failing := true
	b := newTokenBucket(1, ft.Now, func(ctx context.Context, d time.Duration) error {
		if failing {
			return cancelled
		}
		return ft.Sleep(ctx, d)
	})
	ctx := context.Background()
	if err := b.Wait(ctx); err != nil { // the burst token
		t.Fatal(err)
	}
	for range 3 { // three waits given up: their reservations go back
		if err := b.Wait(ctx); !errors.Is(err, cancelled) {
			t.Fatalf("Wait = %v, want the sleep's error", err)
		}
	}
	failing = false
	if err := b.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if len(ft.slept) != 1 || ft.slept[0] != time.Second {
		t.Errorf("slept %v, want one second: the cancelled reservations must not count", ft.slept)
	}
	// A deadline before the next token fails at once, without sleeping: drain the
	// bucket so that the next token is an hour and a bit away.
	b.setRate(1.0 / 4000)
	dctx, cancel := context.WithDeadline(ctx, ft.Now().Add(time.Hour))
	defer cancel()
	if err := b.Wait(dctx); !errors.Is(err, errRateDeadline) {
		t.Errorf("Wait with a near deadline = %v, want errRateDeadline", err)
	}
	if len(ft.slept) != 1 {
		t.Errorf("slept %v after a deadline refusal", ft.slept)
	}
	// A reload to a higher rate applies to the next call.
	b.setRate(100)
	ft.Advance(time.Second)
	ft.slept = nil
	for range 5 {
		if err := b.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range ft.slept {
		if d > 20*time.Millisecond {
			t.Errorf("after setRate(100) a call slept %v", d)
		}
	}
}

func TestSpreadOffsetIsStableAndSpread(t *testing.T) {
	const spread = 20 * time.Minute
	seen := map[time.Duration]bool{}
	var lo, hi int
	for i := 0; i < 200; i++ {
		id := fmt.Sprintf("server-%d", i)
		off := spreadOffset("web", id, spread)
		if off != spreadOffset("web", id, spread) {
			t.Fatalf("offset of %s is not stable", id)
		}
		if off < 0 || off >= spread {
			t.Fatalf("offset %v outside [0, %v)", off, spread)
		}
		if off < spread/2 {
			lo++
		} else {
			hi++
		}
		seen[off] = true
	}
	if lo < 70 || hi < 70 || len(seen) < 190 {
		t.Errorf("offsets are not spread: %d in the first half, %d in the second, %d distinct", lo, hi, len(seen))
	}
	if spreadOffset("web", "a", 0) != 0 {
		t.Error("no spread must mean no offset")
	}
	if spreadOffset("web", "a", spread) == spreadOffset("db", "a", spread) && spreadOffset("web", "b", spread) == spreadOffset("db", "b", spread) {
		t.Error("the policy does not enter the offset")
	}
}

func TestKeyedLocksSerialisePerKey(t *testing.T) {
	var k keyedLocks
	ctx := context.Background()
	var mu sync.Mutex
	inside := map[string]int{}
	maxInside := map[string]int{}
	var wg sync.WaitGroup
	for i := 0; i < 40; i++ {
		key := fmt.Sprint(i % 4)
		wg.Add(1)
		go func() {
			defer wg.Done()
			unlock, err := k.lock(ctx, key)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			inside[key]++
			maxInside[key] = max(maxInside[key], inside[key])
			mu.Unlock()
			time.Sleep(time.Millisecond) // widen the window for overlap, if any
			mu.Lock()
			inside[key]--
			mu.Unlock()
			unlock()
		}()
	}
	wg.Wait()
	for key, n := range maxInside {
		if n != 1 {
			t.Errorf("key %s: %d holders at once", key, n)
		}
	}
	if len(k.m) != 0 {
		t.Errorf("%d locks left in the map", len(k.m))
	}
	// A held lock makes a second locker wait until its context ends.
	unlock, _ := k.lock(ctx, "x")
	cctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := k.lock(cctx, "x"); err == nil {
		t.Error("second lock of a held key succeeded")
	}
	unlock()
}

func TestSemaphoreBoundsWorkers(t *testing.T) {
	s := newSemaphore(3)
	ctx := context.Background()
	var rel []func()
	for i := 0; i < 3; i++ {
		r, err := s.acquire(ctx, "p")
		if err != nil {
			t.Fatal(err)
		}
		rel = append(rel, r)
	}
	cctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := s.acquire(cctx, "p"); err == nil {
		t.Error("a fourth worker got in")
	}
	rel[0]()
	rel[0]() // a second call of one release gives nothing back twice
	if r, err := s.acquire(ctx, "p"); err != nil {
		t.Error(err)
	} else {
		r()
	}
	s.mu.Lock()
	used, waiting := s.used, len(s.ring)
	s.mu.Unlock()
	if used != 2 || waiting != 0 {
		t.Errorf("after the releases: %d slots used, %d keys waiting; want 2 and 0", used, waiting)
	}
}

// TestSemaphoreIsFairAcrossPolicies queues many workers of three policies behind one
// slot, whole policies one after another (as runs started one after another do),
// and checks that slots go round-robin: every policy's first worker before any
// policy's second. A FIFO hands out all of a's before any of c's.
func TestSemaphoreIsFairAcrossPolicies(t *testing.T) {
	s := newSemaphore(1)
	ctx := context.Background()
	hold, err := s.acquire(ctx, "first")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var order []string
	var wg sync.WaitGroup
	queued := 0
	for _, p := range []string{"a", "b", "c"} {
		for i := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				release, err := s.acquire(ctx, p)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				order = append(order, fmt.Sprintf("%s%d", p, i))
				mu.Unlock()
				release()
			}()
			// Queue in a known order: wait until this waiter is in.
			queued++
			for {
				s.mu.Lock()
				n := 0
				for _, q := range s.queues {
					n += len(q)
				}
				s.mu.Unlock()
				if n == queued {
					break
				}
				time.Sleep(time.Millisecond)
			}
		}
	}
	// A waiter that gives up leaves no trace.
	cctx, cancel := context.WithCancel(ctx)
	gaveUp := make(chan error)
	go func() { _, err := s.acquire(cctx, "d"); gaveUp <- err }()
	for {
		s.mu.Lock()
		n := len(s.queues["d"])
		s.mu.Unlock()
		if n == 1 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-gaveUp; err == nil {
		t.Error("a cancelled waiter got a slot")
	}
	hold()
	wg.Wait()
	want := []string{"a0", "b0", "c0", "a1", "b1", "c1", "a2", "b2", "c2", "a3", "b3", "c3"}
	if fmt.Sprint(order) != fmt.Sprint(want) {
		t.Errorf("slots went %v, want round-robin %v", order, want)
	}
}

func TestNextPollBacksOffGently(t *testing.T) {
	var got []time.Duration
	for d := DefaultPollInterval; len(got) < 12; d = nextPoll(d, DefaultMaxPollInterval) {
		got = append(got, d)
	}
	if got[0] != 2*time.Second || got[1] != 3*time.Second || got[2] != 4500*time.Millisecond {
		t.Errorf("first waits %v, want 2s, 3s, 4.5s", got[:3])
	}
	if got[len(got)-1] != DefaultMaxPollInterval {
		t.Errorf("waits %v never reach the maximum %v", got, DefaultMaxPollInterval)
	}
}

// TestLockYieldingSaysWhenSomeoneWaits: the holder of a yielding lock learns when
// another caller queues for the key, and only then.
func TestLockYieldingSaysWhenSomeoneWaits(t *testing.T) {
	var k keyedLocks
	ctx := context.Background()
	unlock, wanted, err := k.lockYielding(ctx, "db")
	if err != nil {
		t.Fatal(err)
	}
	other, _, err := k.lockYielding(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	defer other()
	select {
	case <-wanted:
		t.Fatal("wanted closed although nobody waits for this key")
	default:
	}
	got := make(chan func(), 1)
	go func() {
		u, err := k.lock(ctx, "db")
		if err != nil {
			t.Error(err)
		}
		got <- u
	}()
	select {
	case <-wanted:
	case <-time.After(10 * time.Second):
		t.Fatal("wanted not closed while another caller waits")
	}
	unlock()
	u := <-got
	u()
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, ok := k.m["db"]; ok {
		t.Error("the key's lock outlived its last holder")
	}
}
