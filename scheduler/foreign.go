package scheduler

import (
	"context"
	"fmt"
	"sort"

	"github.com/imagekeeper/imagekeeper/cloud"
	"github.com/imagekeeper/imagekeeper/policy"
)

// ForeignStamps counts, by owner id, the images in the cloud stamped with one of
// cfg's policy names but another owner than the store's. Such images are invisible
// to reconcile and retention (both look only at our owner's stamp); the usual cause
// is a lost lineage.db, whose replacement made a new owner id, and the cure is
// `imagekeeper recover --owner ID`. Another installation in the same project with
// the same policy names shows here too. It also records the total in the
// imagekeeper_foreign_stamped_images gauge.
func (rc *Reconciler) ForeignStamps(ctx context.Context, cfg *policy.Config) (map[string]int, error) {
	if cfg == nil {
		return nil, nil
	}
	own := rc.sh.store.Owner()
	byOwner := map[string]int{}
	seen := map[string]bool{}
	total := 0
	for _, p := range cfg.Policies {
		images, err := rc.sh.Cloud().ListImages(ctx, map[string]string{cloud.StampPolicy: p.Name})
		if err != nil {
			return nil, fmt.Errorf("list images stamped with policy %s: %w", p.Name, err)
		}
		for _, im := range images {
			owner := im.Properties[cloud.StampOwner]
			if owner == "" || owner == own || seen[im.ID] {
				continue
			}
			seen[im.ID] = true
			byOwner[owner]++
			total++
		}
	}
	rc.sh.metrics.SetForeignStamped(total)
	return byOwner, nil
}

// Owners returns the owner ids of a ForeignStamps result, most images first.
func Owners(byOwner map[string]int) []string {
	out := make([]string, 0, len(byOwner))
	for o := range byOwner {
		out = append(out, o)
	}
	sort.Slice(out, func(i, j int) bool {
		if byOwner[out[i]] != byOwner[out[j]] {
			return byOwner[out[i]] > byOwner[out[j]]
		}
		return out[i] < out[j]
	})
	return out
}
