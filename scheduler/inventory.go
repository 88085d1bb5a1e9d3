package scheduler

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/imagekeeper/imagekeeper/cloud"
)

// inventoryTTL is how long one listing of the project's servers serves the runs of
// its slot instant: long enough for every policy due at that instant to start, short
// enough that a run starting late (behind a long previous run) lists afresh.
const inventoryTTL = 30 * time.Second

// errNoTags is returned when a policy selects by tags and the shared listing carries
// no tags at all: Nova answered below microversion 2.26, so tags are unknown, not
// absent. The adapter refuses a filtered listing in that case for the same reason.
var errNoTags = errors.New("the server list carries no tags (compute microversion below 2.26 in effect): cannot select by tags")

// inventory shares one listing of every server between the runs of one slot
// instant: with a hundred policies due at once, one listing of 10,000 servers
// instead of a hundred filtered ones, each of which Nova filters and the client
// decodes. Each run selects its servers from it with its selector (Matches, which
// every cloud implementation applies to its own results anyway). A failed listing
// is not kept: the runs waiting for it get its error, later ones list again.
type inventory struct {
	mu      sync.Mutex
	entries map[time.Time]*inventoryEntry
}

type inventoryEntry struct {
	done    chan struct{}
	at      time.Time // when the listing started, by the Shared clock
	servers []cloud.Server
	err     error
}

// servers returns the listing for slot, making it with list when no fresh one is
// held or in flight.
func (inv *inventory) servers(ctx context.Context, slot, now time.Time, list func(context.Context) ([]cloud.Server, error)) ([]cloud.Server, error) {
	e, ok := inv.entry(slot, now)
	if !ok {
		inv.make(ctx, e, now, list)
		return e.servers, e.err
	}
	select {
	case <-e.done:
		return e.servers, e.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// prefetch starts the listing for slot in the background unless one is held or in
// flight: the runs of slot then find it made (Runner.PrepareSlot). It reports
// whether it started one.
func (inv *inventory) prefetch(ctx context.Context, slot, now time.Time, list func(context.Context) ([]cloud.Server, error)) bool {
	e, ok := inv.entry(slot, now)
	if !ok {
		go inv.make(ctx, e, now, list)
	}
	return !ok
}

// make fills e with a listing and tells its waiters.
func (inv *inventory) make(ctx context.Context, e *inventoryEntry, now time.Time, list func(context.Context) ([]cloud.Server, error)) {
	e.servers, e.err = list(ctx)
	e.at = now // the Shared clock, which the expiry compares with
	close(e.done)
}

// entry returns the entry of slot, dropping stale ones; ok is false when the entry
// is new and the caller must make it.
func (inv *inventory) entry(slot, now time.Time) (e *inventoryEntry, ok bool) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if inv.entries == nil {
		inv.entries = map[time.Time]*inventoryEntry{}
	}
	for k, e := range inv.entries {
		select {
		case <-e.done:
			if e.err != nil || now.Sub(e.at) > inventoryTTL {
				delete(inv.entries, k)
			}
		default:
		}
	}
	e, ok = inv.entries[slot]
	if !ok {
		e = &inventoryEntry{done: make(chan struct{})}
		inv.entries[slot] = e
	}
	return e, ok
}

// selectServers returns the servers of all that sel selects. A selector by tags
// over a listing in which no server carries a tags field is refused (errNoTags).
func selectServers(all []cloud.Server, sel cloud.Selector) ([]cloud.Server, error) {
	byTags := len(sel.Tags)+len(sel.TagsAny)+len(sel.ExcludeTags) > 0
	tagged := false
	var out []cloud.Server
	for _, s := range all {
		if s.Tags != nil {
			tagged = true
		}
		if sel.Matches(s.Tags, s.AvailabilityZone) {
			out = append(out, s)
		}
	}
	if byTags && !tagged && len(all) > 0 {
		return nil, errNoTags
	}
	return out, nil
}
