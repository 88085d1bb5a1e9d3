package scheduler

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/imagekeeper/imagekeeper/policy"
	"github.com/imagekeeper/imagekeeper/store"
)

// TestRetentionRequestMergesAndDecidesLate requests retention while a run of the
// policy holds its lock, as Settled does at the end of every run. Requests made
// meanwhile merge into one due prune, and the prune decides by the config in force
// once it holds the lock: keep_last raised by a reload in the meantime deletes
// nothing that the new rule keeps.
func TestRetentionRequestMergesAndDecidesLate(t *testing.T) {
	h := newHarness(t, retentionScene("      keep_last: 1"))
	h.server("app", 0)
	h.slots(3)
	cfgs := policy.NewCoordinator(h.cfg)
	done := make(chan string, 10)
	ret := NewRetention(h.r.sh, cfgs, RetentionOptions{Done: func(_ context.Context, name string) { done <- name }})

	unlock, err := h.r.sh.LockPolicy(context.Background(), h.p.Name)
	if err != nil {
		t.Fatal(err)
	}
	ret.Request(h.p.Name)
	// Once its worker has taken the first request (and waits for the lock), four
	// more arrive.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		ret.mu.Lock()
		taken := !ret.due[h.p.Name]
		ret.mu.Unlock()
		if taken {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the requested prune never started")
		}
	}
	for range 4 {
		ret.Request(h.p.Name)
	}
	raised, err := policy.Parse("prune.yaml", fmt.Appendf(nil, prunePolicyYAML, "      keep_last: 10"))
	if err != nil {
		t.Fatal(err)
	}
	if err := cfgs.Apply(raised); err != nil {
		t.Fatal(err)
	}
	unlock()

	// The first request's prune was waiting on the lock; the four others merged
	// into one more.
	for i := range 2 {
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Fatalf("requested prune %d did not run", i+1)
		}
	}
	select {
	case <-done:
		t.Fatal("a third prune ran: requests made while one was due did not merge")
	case <-time.After(200 * time.Millisecond):
	}
	if n := len(h.rows(store.ImageGood)); n != 3 {
		t.Fatalf("%d good images left after a prune requested under keep_last 1 and run under keep_last 10; want 3", n)
	}
}
