package scheduler

import (
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/imagekeeper/imagekeeper/policy"
)

// MaxSimulatedSlots bounds a retention simulation: a horizon of a year of an @every
// 1m schedule would otherwise plan half a million runs.
const MaxSimulatedSlots = 5000

// SimImage is an image in a retention simulation.
type SimImage struct {
	policy.RetentionImage
	ServerID string
	Name     string
}

// SimStep is one slot of a simulation: the images the run makes and what the
// prune after it deletes.
type SimStep struct {
	Slot    time.Time
	Created []SimImage
	Deleted []SimDeletion
	// Deferred counts deletions max_deletions_per_run left for a later slot.
	Deferred int
}

// SimDeletion is an image the simulated prune deletes, with retention's reasons.
type SimDeletion struct {
	SimImage
	Reasons []string
}

// SimServer is a server in a simulation: Selected ones get an image at every slot;
// others only have their existing images (a server gone or no longer selected).
type SimServer struct {
	ID       string
	Selected bool
	// Idle marks a selected server that gets no images (one in ERROR: a backup run
	// skips it) but whose existing images retention treats as a live server's.
	Idle bool
	// Name renders the image name of a slot (nil: the server id and the slot).
	Name func(slot time.Time) string
}

// SimulateRetention plays policy p forward over (from, until]: at every slot of its
// schedule each selected server gets a good image, and then the prune runs as Prune
// would (policy.Retain per server, when_server_gone, max_deletions_per_run oldest
// first, with the same rules and cap as Prune). existing holds each server's images now; images in progress count as good
// from their slot on (the optimistic case). It returns one step per slot and the
// images left at the end, by server.
func SimulateRetention(p *policy.Policy, servers []SimServer, existing map[string][]SimImage, from, until time.Time) ([]SimStep, map[string][]SimImage, error) {
	if p == nil || p.Schedule == nil {
		return nil, nil, errors.New("simulate retention: policy without schedule")
	}
	loc := p.Location()
	held := map[string][]SimImage{}
	for sid, ims := range existing {
		for _, im := range ims {
			if im.Status == policy.RetentionInProgress {
				im.Status = policy.RetentionGood
			}
			held[sid] = append(held[sid], im)
		}
	}
	sort.Slice(servers, func(i, j int) bool { return servers[i].ID < servers[j].ID })
	limit := deletionLimit(p.Retention)
	var steps []SimStep
	for slot := p.Schedule.Next(from); !slot.IsZero() && !slot.After(until); slot = p.Schedule.Next(slot) {
		if len(steps) == MaxSimulatedSlots {
			return nil, nil, fmt.Errorf("simulate retention: more than %d slots before %s; shorten the horizon", MaxSimulatedSlots, until.Format(time.RFC3339))
		}
		step := SimStep{Slot: slot}
		for _, s := range servers {
			if !s.Selected || s.Idle {
				continue
			}
			name := fmt.Sprintf("%s@%s", s.ID, slot.In(loc).Format("2006-01-02T15:04"))
			if s.Name != nil {
				name = s.Name(slot)
			}
			im := SimImage{ServerID: s.ID, Name: name, RetentionImage: policy.RetentionImage{
				ID: fmt.Sprintf("sim-%s-%d", s.ID, slot.Unix()), Time: slot, Status: policy.RetentionGood}}
			held[s.ID] = append(held[s.ID], im)
			step.Created = append(step.Created, im)
		}
		selected := map[string]bool{}
		for _, s := range servers {
			selected[s.ID] = s.Selected
		}
		var cands []SimDeletion
		sids := make([]string, 0, len(held))
		for sid := range held {
			sids = append(sids, sid)
		}
		sort.Strings(sids)
		for _, sid := range sids {
			ims := held[sid]
			in := make([]policy.RetentionImage, len(ims))
			byID := make(map[string]SimImage, len(ims))
			for i, im := range ims {
				in[i] = im.RetentionImage
				byID[im.ID] = im
			}
			// The prune runs right after the slot's images are good, and decides as
			// Prune does: a server no longer selected is a gone server.
			for _, d := range retainServer(nil, in, p.Retention, loc, slot, !selected[sid]) {
				if !d.Keep {
					cands = append(cands, SimDeletion{SimImage: byID[d.ImageID], Reasons: d.Reasons})
				}
			}
		}
		sort.SliceStable(cands, func(i, j int) bool {
			if !cands[i].Time.Equal(cands[j].Time) {
				return cands[i].Time.Before(cands[j].Time)
			}
			return cands[i].ID < cands[j].ID
		})
		if len(cands) > limit {
			step.Deferred = len(cands) - limit
			cands = cands[:limit]
		}
		gone := map[string]bool{}
		for _, c := range cands {
			gone[c.ID] = true
		}
		for sid, ims := range held {
			kept := ims[:0]
			for _, im := range ims {
				if !gone[im.ID] {
					kept = append(kept, im)
				}
			}
			held[sid] = kept
		}
		step.Deleted = cands
		steps = append(steps, step)
	}
	return steps, held, nil
}
