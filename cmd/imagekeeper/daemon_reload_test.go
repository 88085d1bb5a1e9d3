package main

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/imagekeeper/imagekeeper/cloud/simcloud"
	"github.com/imagekeeper/imagekeeper/store"
)

// retentionPolicyYAML is a policy of the test config with its own retention and
// extra policy-level lines (enabled: false, say).
func retentionPolicyYAML(name, every, tag, retention, policyExtra string) string {
	return fmt.Sprintf(`  - name: %s
    select: {tags: [%s]}
    schedule: {cron: "%s"}
    image:
      name: '{{ .Server.Name }}-%s-{{ .Slot.Format "150405" }}'
      wait_timeout: 30s
    retention: {%s}
%s`, name, tag, every, name, retention, policyExtra)
}

// TestDaemonReloadDuringRunPrunesByNewRules is issue 11's reproduction: a slot is
// in flight (3 s builds, @every 6s, keep_last: 1) when the operator raises
// keep_last, renames the policy or disables it. The retention after that run must
// follow the file in force when it decides, so the first good image stays. Before
// the fix, the run pruned with the config it started with and deleted it.
func TestDaemonReloadDuringRunPrunesByNewRules(t *testing.T) {
	const old = "keep_last: 1, min_keep: 1"
	for _, tc := range []struct {
		name string
		next string
	}{
		{"keep_last raised", retentionPolicyYAML("k", "@every 6s", "k", "keep_last: 100, min_keep: 1", "")},
		{"renamed", retentionPolicyYAML("k2", "@every 6s", "k", old, "")},
		{"disabled", retentionPolicyYAML("k", "@every 6s", "k", old, "    enabled: false\n")},
		{"removed", retentionPolicyYAML("other", "@every 6s", "nothing", old, "")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, simcloud.Options{ImageBuildTime: 3 * time.Second})
			e.sim.AddServer(simcloud.ServerSpec{Name: "s-1", Tags: []string{"k"}})
			e.writeConfig(retentionPolicyYAML("k", "@every 6s", "k", old, ""))
			r := e.start()
			ctx := context.Background()

			// Once one image is good and the next slot's is being made, reload.
			var first, inFlight store.Image
			eventually(t, "one good image and the next in flight", 60*time.Second, func() bool {
				rows, err := r.st.Images(ctx, store.ImageFilter{Policy: "k"})
				if err != nil {
					t.Fatal(err)
				}
				first, inFlight = store.Image{}, store.Image{}
				for _, im := range rows {
					switch im.State {
					case store.ImageGood:
						if first.Row == 0 || im.Slot.Before(first.Slot) {
							first = im
						}
					case store.ImageRequested, store.ImageCreating:
						inFlight = im
					}
				}
				return first.Row != 0 && inFlight.Row != 0 && inFlight.Slot.After(first.Slot)
			})
			e.writeConfig(tc.next)
			if err := waitReload(t, r); err != nil {
				t.Fatalf("reload: %v\n%s", err, r.logs)
			}
			im, err := r.st.Image(ctx, inFlight.Row)
			if err != nil {
				t.Fatal(err)
			}
			if im.State != store.ImageRequested && im.State != store.ImageCreating {
				t.Skipf("the in-flight image settled (%s) before the reload landed: the race this test needs did not happen", im.State)
			}

			// The run in flight finishes, and what follows it (retention) has time to act.
			eventually(t, "the in-flight image is good", 30*time.Second, func() bool {
				im, err := r.st.Image(ctx, inFlight.Row)
				return err == nil && im.State == store.ImageGood
			})
			time.Sleep(2 * time.Second)

			got, err := r.st.Image(ctx, first.Row)
			if err != nil {
				t.Fatal(err)
			}
			if got.State != store.ImageGood {
				t.Errorf("first image %s is %s after the reload to %q: retention used the replaced rules\n%s",
					first.ImageID, got.State, tc.name, r.logs)
			}
			found := false
			for _, s := range e.sim.Images() {
				found = found || s.ID == first.ImageID
			}
			if !found {
				t.Errorf("first image %s deleted from the cloud after the reload", first.ImageID)
			}
			if err := r.stop(t); err != nil {
				t.Fatalf("drain: %v", err)
			}
		})
	}
}
