package store_test

import (
	"context"
	"testing"
	"time"

	"github.com/imagekeeper/imagekeeper/store"
	"github.com/imagekeeper/imagekeeper/store/storetest"
)

// TestDrillJournal: a drill's result lands on its image row; an interrupted
// drill (cleaned without a result) says nothing about the image or the policy's
// last result.
func TestDrillJournal(t *testing.T) {
	ctx := context.Background()
	st := storetest.MustOpen(t, nil)
	row, _, err := st.RecordIntent(ctx, store.Intent{Name: "n", Policy: "web", ServerID: "s1", Slot: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)})
	if err != nil {
		t.Fatal(err)
	}
	d, err := st.StartDrill(ctx, store.Drill{Policy: "web", ServerID: "s1", ImageRow: row.Row, ImageID: "img", Token: "t1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.SetDrillServer(ctx, d.ID, "srv", []string{"v1", "v2"}); err != nil {
		t.Fatal(err)
	}
	if err := st.FinishDrill(ctx, d, store.VerifyOK, "ACTIVE"); err != nil {
		t.Fatal(err)
	}
	open, err := st.OpenDrills(ctx)
	if err != nil || len(open) != 1 || open[0].State != store.DrillCleaning || open[0].DrillServerID != "srv" || len(open[0].VolumeIDs) != 2 {
		t.Fatalf("open drills after the result = %+v %v", open, err)
	}
	if err := st.MarkDrillCleaned(ctx, open[0]); err != nil {
		t.Fatal(err)
	}
	v, err := st.Verification(ctx, row.Row)
	if err != nil || v.Result != store.VerifyOK || v.At.IsZero() {
		t.Errorf("verification = %+v %v", v, err)
	}
	// An interrupted drill: cleaned without a result.
	d2, err := st.StartDrill(ctx, store.Drill{Policy: "web", ServerID: "s1", ImageRow: row.Row, ImageID: "img", Token: "t2"})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.MarkDrillCleaned(ctx, d2); err != nil {
		t.Fatal(err)
	}
	got, err := st.DrillByToken(ctx, "t2")
	if err != nil || got.State != store.DrillDone || got.Result != store.VerifyInterrupted {
		t.Errorf("interrupted drill = %+v %v", got, err)
	}
	okAt, last, err := st.LastVerified(ctx)
	if err != nil || last["web"] != store.VerifyOK || okAt["web"].IsZero() {
		t.Errorf("LastVerified = %v %v %v; an interrupted drill must not count", okAt, last, err)
	}
	if open, _ := st.OpenDrills(ctx); len(open) != 0 {
		t.Errorf("open drills at the end: %+v", open)
	}
}
