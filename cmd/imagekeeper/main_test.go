package main

import (
	"context"
	"os"
	"syscall"
	"testing"
	"time"
)

// TestForwardSignals checks what main makes of the process's signals: SIGHUP is a
// reload request on a one-slot channel (requests sent while one is pending make one
// reload, and the sender never blocks), the first SIGINT/SIGTERM cancels the
// context with the signal as its cause, a second one closes abort.
func TestForwardSignals(t *testing.T) {
	// forward sends sigs through forwardSignals and returns once it has taken them all.
	forward := func(t *testing.T, sigs ...os.Signal) (context.Context, chan struct{}, chan struct{}) {
		t.Helper()
		ch := make(chan os.Signal)
		ctx, stop := context.WithCancelCause(context.Background())
		reload, abort := make(chan struct{}, 1), make(chan struct{})
		done := make(chan struct{})
		go func() { defer close(done); forwardSignals(ch, stop, reload, abort) }()
		for _, s := range sigs {
			select {
			case ch <- s: // unbuffered: forwardSignals took each before the next
			case <-time.After(5 * time.Second):
				t.Fatalf("forwardSignals blocked before taking %v", s)
			}
		}
		close(ch)
		<-done
		return ctx, reload, abort
	}
	closed := func(c <-chan struct{}) bool {
		select {
		case <-c:
			return true
		default:
			return false
		}
	}

	t.Run("reloads coalesce while one is pending", func(t *testing.T) {
		ctx, reload, abort := forward(t, syscall.SIGHUP, syscall.SIGHUP, syscall.SIGHUP)
		if n := len(reload); n != 1 {
			t.Fatalf("%d reload requests pending after three SIGHUPs, want 1", n)
		}
		if ctx.Err() != nil || closed(abort) {
			t.Fatal("SIGHUP stopped or aborted")
		}
	})
	t.Run("a reload taken makes room for the next", func(t *testing.T) {
		ch := make(chan os.Signal)
		_, stop := context.WithCancelCause(context.Background())
		reload := make(chan struct{}, 1)
		go forwardSignals(ch, stop, reload, make(chan struct{}))
		defer close(ch)
		for i := range 2 {
			ch <- syscall.SIGHUP
			<-reload // blocks forever if the request was dropped
			if len(reload) != 0 {
				t.Fatalf("round %d: a request left over", i)
			}
		}
	})
	t.Run("first stop signal cancels with its cause", func(t *testing.T) {
		ctx, reload, abort := forward(t, syscall.SIGTERM)
		if ctx.Err() == nil {
			t.Fatal("SIGTERM did not cancel the context")
		}
		if got := whyStopped(ctx); got != "signal terminated" {
			t.Fatalf("whyStopped = %q, want %q", got, "signal terminated")
		}
		if closed(abort) || len(reload) != 0 {
			t.Fatal("one SIGTERM aborted or asked for a reload")
		}
	})
	t.Run("second stop signal aborts, a third is harmless", func(t *testing.T) {
		ctx, _, abort := forward(t, syscall.SIGINT, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
		if got := whyStopped(ctx); got != "signal interrupt" {
			t.Fatalf("whyStopped = %q, want the first signal, %q", got, "signal interrupt")
		}
		if !closed(abort) {
			t.Fatal("a second stop signal did not close abort")
		}
	})
	t.Run("a plain cancel reads as before", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if got := whyStopped(ctx); got != "context cancelled" {
			t.Fatalf("whyStopped = %q", got)
		}
	})
}
