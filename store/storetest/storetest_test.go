package storetest_test

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/imagekeeper/imagekeeper/store"
	"github.com/imagekeeper/imagekeeper/store/storetest"
)

var t0 = time.Date(2026, 11, 24, 2, 30, 0, 0, time.UTC)

func TestClock(t *testing.T) {
	t.Run("AdvanceAndSet", func(t *testing.T) {
		c := storetest.NewClock(t0)
		c.Advance(90 * time.Second)
		if got, want := c.Now(), t0.Add(90*time.Second); !got.Equal(want) {
			t.Errorf("after Advance: %v, want %v", got, want)
		}
		c.Set(t0)
		if got := c.Now(); !got.Equal(t0) {
			t.Errorf("after Set: %v, want %v", got, t0)
		}
	})
	t.Run("SleepAdvances", func(t *testing.T) {
		c := storetest.NewClock(t0)
		if err := c.Sleep(context.Background(), time.Hour); err != nil {
			t.Fatal(err)
		}
		if got, want := c.Now(), t0.Add(time.Hour); !got.Equal(want) {
			t.Errorf("after Sleep: %v, want %v", got, want)
		}
	})
	t.Run("SleepHonoursContext", func(t *testing.T) {
		c := storetest.NewClock(t0)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := c.Sleep(ctx, time.Hour); !errors.Is(err, context.Canceled) {
			t.Errorf("Sleep on a cancelled context: %v, want context.Canceled", err)
		}
		if got := c.Now(); !got.Equal(t0) {
			t.Errorf("cancelled Sleep moved the clock to %v", got)
		}
	})
	t.Run("Concurrent", func(t *testing.T) {
		c := storetest.NewClock(t0)
		var wg sync.WaitGroup
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 100 {
					c.Advance(time.Second)
					_ = c.Sleep(context.Background(), time.Second)
					_ = c.Now()
				}
			}()
		}
		wg.Wait()
		if got, want := c.Now(), t0.Add(1600*time.Second); !got.Equal(want) {
			t.Errorf("after 1600 concurrent seconds: %v, want %v", got, want)
		}
	})
}

func TestMustOpen(t *testing.T) {
	ctx := context.Background()
	c := storetest.NewClock(t0)
	s := storetest.MustOpen(t, c)
	slot := t0.Truncate(time.Hour)
	if _, _, err := s.RecordIntent(ctx, store.Intent{Policy: "p", ServerID: "srv", Slot: slot, Name: "n"}); err != nil {
		t.Fatal(err)
	}
	im, err := s.ImageByKey(ctx, "p", "srv", slot)
	if err != nil {
		t.Fatal(err)
	}
	if !im.RequestedAt.Equal(t0) {
		t.Errorf("requested_at = %v, want the clock's %v", im.RequestedAt, t0)
	}

	path := filepath.Join(t.TempDir(), "at.db")
	if s := storetest.MustOpenAt(t, path, nil); s.Path() != path {
		t.Errorf("MustOpenAt path = %q, want %q", s.Path(), path)
	}
}
