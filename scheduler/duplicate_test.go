package scheduler

import (
	"context"
	"testing"
	"time"

	"github.com/imagekeeper/imagekeeper/cloud/simcloud"
	"github.com/imagekeeper/imagekeeper/store"
)

// TestReconcileDuplicate: two images with our full stamp for one slot, made by the
// same server, are reported duplicate (not stamped_inherited). --fix deletes the
// newer one only where the lineage shows a createImage with an unknown outcome for
// that slot; an older one, or one beside a row with a known outcome, is kept.
func TestReconcileDuplicate(t *testing.T) {
	h := newHarness(t)
	lost := h.sim.AddServer(simcloud.ServerSpec{Name: "lost", Tags: []string{"backup=daily"}})
	plain := h.sim.AddServer(simcloud.ServerSpec{Name: "plain", Tags: []string{"backup=daily"}})
	// The first createImage (server order: by id) answers 500 after making the image.
	h.sim.SetFault(simcloud.Fault{Op: "compute.createImage", ErrorStatus: 500, After: true, Count: 1})
	ctx := context.Background()
	r := h.runner(func(o *runnerOptions) { o.Limits.Concurrency = 1 })
	if rep, err := r.RunSlot(ctx, h.cfg.Version, h.p, h.slot, TriggerManual); err != nil || rep.Counts.Good != 2 {
		t.Fatalf("slot: %+v %v", rep, err)
	}
	rows := map[string]store.Image{}
	for _, id := range []string{lost, plain} {
		row, err := h.store.ImageByKey(ctx, "web", id, h.slot)
		if err != nil {
			t.Fatal(err)
		}
		rows[id] = row
	}
	if rows[lost].Adopted == rows[plain].Adopted {
		// The fault hit the other server: swap the names so that "lost" is the adopted one.
		lost, plain = plain, lost
	}
	dup := func(server string, d time.Duration) string {
		orig, ok := h.sim.Image(rows[server].ImageID)
		if !ok || orig.Properties["instance_uuid"] != server {
			t.Fatalf("image of %s: %+v", server, orig)
		}
		return h.sim.PutImage(simcloud.ImageState{Name: orig.Name, Status: "active", Size: orig.Size,
			Properties: orig.Properties, CreatedAt: orig.CreatedAt.Add(d)})
	}
	newer, older, plainDup := dup(lost, time.Minute), dup(lost, -time.Minute), dup(plain, time.Minute)

	rep, err := NewReconciler(r.sh).Reconcile(ctx, h.cfg, false)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Counts[DriftCategory("duplicate")] != 3 || rep.Counts[DriftInherited] != 0 {
		t.Fatalf("counts %v, want duplicate 3 and no stamped_inherited", rep.Counts)
	}
	if _, err := NewReconciler(r.sh).Reconcile(ctx, h.cfg, true); err != nil {
		t.Fatal(err)
	}
	if _, ok := h.sim.Image(newer); ok {
		t.Errorf("newer duplicate of an unknown-outcome slot not deleted by --fix")
	}
	for name, id := range map[string]string{"older duplicate": older, "duplicate beside a known outcome": plainDup,
		"lost's own image": rows[lost].ImageID, "plain's own image": rows[plain].ImageID} {
		if _, ok := h.sim.Image(id); !ok {
			t.Errorf("%s %s was deleted", name, id)
		}
	}
}
