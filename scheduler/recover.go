package scheduler

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/imagekeeper/imagekeeper/cloud"
	"github.com/imagekeeper/imagekeeper/policy"
	"github.com/imagekeeper/imagekeeper/store"
)

// RecoveredImage is one image a recovery found by its stamp.
type RecoveredImage struct {
	ImageID  string
	Policy   string
	ServerID string
	Slot     time.Time
	// Row is the lineage row, 0 when the image was skipped.
	Row int64
	// State is the row's state after the recovery settled it from Glance and Cinder.
	State store.ImageState
	// Note says why an image was skipped, or what the settling found (a failure's
	// reason).
	Note string
}

// RecoverReport is what Recover did.
type RecoverReport struct {
	Owner string
	// CloudImages counts the images stamped with the owner.
	CloudImages int
	// Recovered lists the rows written; Skipped the stamped images that got none.
	Recovered []RecoveredImage
	Skipped   []RecoveredImage
}

// Recover rebuilds the lineage of the store's owner from the cloud's stamps, after
// the lineage was lost: every image stamped with the owner gets its row back
// (adopted, with an image_recovered event), and the usual wait then settles each
// from Glance and Cinder (good when active with every volume snapshot available,
// failed otherwise), recording the snapshots as a backup run does. Images whose
// stamp is incomplete, that are snapshots of a server booted from one of our images
// (instance_uuid names another server), or whose (policy, server, slot) already has
// a row are skipped and reported. Request times are Glance's creation times, so
// recovery points keep their real age. Set the store's owner first.
func (rc *Reconciler) Recover(ctx context.Context, cfg *policy.Config) (*RecoverReport, error) {
	owner := rc.sh.store.Owner()
	images, err := rc.sh.Cloud().ListImages(ctx, map[string]string{cloud.StampOwner: owner})
	if err != nil {
		return nil, fmt.Errorf("recover: list images stamped by %s: %w", owner, err)
	}
	rep := &RecoverReport{Owner: owner, CloudImages: len(images)}
	// Oldest first, so that of two images with one stamp (a createImage whose
	// outcome was unknown, asked twice) the first one made gets the row.
	sort.Slice(images, func(i, j int) bool {
		if !images[i].CreatedAt.Equal(images[j].CreatedAt) {
			return images[i].CreatedAt.Before(images[j].CreatedAt)
		}
		return images[i].ID < images[j].ID
	})
	for _, im := range images {
		stamp, ok := cloud.StampOf(im.Properties)
		ri := RecoveredImage{ImageID: im.ID, Policy: stamp.Policy, ServerID: stamp.Server}
		slot, perr := time.Parse(time.RFC3339, stamp.Slot)
		switch {
		case !ok || perr != nil:
			ri.Note = "incomplete or unreadable stamp: not recovered"
		case im.Properties["instance_uuid"] != "" && im.Properties["instance_uuid"] != stamp.Server:
			ri.Note = fmt.Sprintf("made of server %s, stamp names %s: a snapshot of a server booted from our image, not ours",
				im.Properties["instance_uuid"], stamp.Server)
		}
		if ri.Note != "" {
			rep.Skipped = append(rep.Skipped, ri)
			continue
		}
		ri.Slot = slot
		row, created, err := rc.sh.store.RecoverImage(ctx, store.Recovered{Policy: stamp.Policy, ServerID: stamp.Server,
			Slot: slot, Name: im.Name, ImageID: im.ID, VolumeBacked: len(im.Snapshots) > 0, CreatedAt: im.CreatedAt,
			Metadata: stamp.Properties()})
		if err != nil {
			return rep, fmt.Errorf("recover: %w", err)
		}
		ri.Row, ri.State = row.Row, row.State
		if !created {
			ri.Note = fmt.Sprintf("already in the lineage: row %d (image %s, %s)", row.Row, orNone(row.ImageID), row.State)
			rep.Skipped = append(rep.Skipped, ri)
			continue
		}
		rep.Recovered = append(rep.Recovered, ri)
	}
	// Settle what was recovered from Glance and Cinder. The rows' request times are
	// the images' creation times, so their wait deadlines are long past: one poll
	// each decides good or failed.
	if err := rc.w.resume(ctx, policy.NewCoordinator(cfg)); err != nil {
		return rep, fmt.Errorf("recover: settle the recovered images: %w", err)
	}
	for i := range rep.Recovered {
		ri := &rep.Recovered[i]
		row, err := rc.sh.store.Image(ctx, ri.Row)
		if err != nil {
			return rep, fmt.Errorf("recover: %w", err)
		}
		ri.State, ri.Note = row.State, row.Reason
	}
	return rep, nil
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
