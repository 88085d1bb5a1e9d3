package store_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/imagekeeper/imagekeeper/store"
	"github.com/imagekeeper/imagekeeper/store/storetest"
)

// TestPolicies checks that the lineage lists the policies it has slots or images
// of, once each, sorted.
func TestPolicies(t *testing.T) {
	s := storetest.MustOpen(t, newClock())
	ctx := context.Background()
	if got, err := s.Policies(ctx); err != nil || len(got) != 0 {
		t.Fatalf("empty lineage: %v, %v", got, err)
	}
	slot := time.Date(2026, 11, 24, 0, 0, 0, 0, time.UTC)
	if _, err := s.StartSlot(ctx, store.Slot{Policy: "web", Slot: slot, Trigger: store.TriggerScheduled}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"db", "web"} {
		if _, _, err := s.RecordIntent(ctx, store.Intent{Policy: p, ServerID: "srv", Slot: slot, Name: "n"}); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.Policies(ctx)
	if err != nil || fmt.Sprint(got) != "[db web]" {
		t.Errorf("Policies = %v, %v; want [db web]", got, err)
	}
}
