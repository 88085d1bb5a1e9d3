package scheduler

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/imagekeeper/imagekeeper/policy"
	"github.com/imagekeeper/imagekeeper/store"
)

// periodWindow is how far ahead SchedulePeriod looks for the longest gap between
// slots: a week covers weekday-only and weekly schedules.
const periodWindow = 7 * 24 * time.Hour

// periodMaxSlots bounds SchedulePeriod's walk (a week of per-minute slots is 10080).
const periodMaxSlots = 20000

// periodRecompute is how often a cached period is recomputed even if the policy did
// not change, so that a DST transition inside the window shows up.
const periodRecompute = 24 * time.Hour

// SchedulePeriod returns the longest gap between consecutive slots of s from now
// over the coming week (at least one gap), or 0 if s fires fewer than twice. It is
// the period the stale-recovery-point alert scales: with the longest gap, a
// weekday-only schedule does not alert every Monday morning.
func SchedulePeriod(s *policy.Schedule, now time.Time) time.Duration {
	if s == nil {
		return 0
	}
	if s.Every > 0 {
		return s.Every
	}
	end := now.Add(periodWindow)
	prev := s.Next(now)
	if prev.IsZero() {
		return 0
	}
	var longest time.Duration
	for i := 0; i < periodMaxSlots; i++ {
		next := s.Next(prev)
		if next.IsZero() {
			break
		}
		if d := next.Sub(prev); d > longest {
			longest = d
		}
		if next.After(end) {
			break
		}
		prev = next
	}
	return longest
}

// Refresh recomputes the gauges that come from the lineage rather than from events
// in this process: images by policy and state, leftover snapshots, the worst
// recovery point and the servers without a good image per policy, the last success
// per policy (so that a restarted daemon reports it before its first run), and each
// policy's schedule period. Only the policies of the config in force are exported
// (a removed policy's images stay in the store, not in the metrics). Errors are
// returned joined after every gauge that could be computed was set; nil m, st or
// cfgs does nothing.
func (m *Metrics) Refresh(ctx context.Context, st *store.Store, cfgs *policy.Coordinator, now time.Time) error {
	if cfgs == nil {
		return nil
	}
	cfg := cfgs.Current()
	if cfg == nil {
		return nil
	}
	return m.refresh(ctx, st, cfg.Policies, now)
}

// RefreshPolicy is Refresh for one policy (and the global gauges): after a run, a
// full refresh per policy would be quadratic when many are due at once. A policy
// absent from the config in force is left alone.
func (m *Metrics) RefreshPolicy(ctx context.Context, st *store.Store, cfgs *policy.Coordinator, name string, now time.Time) error {
	if cfgs == nil {
		return nil
	}
	p := findPolicy(cfgs.Current(), name)
	if p == nil {
		return nil
	}
	return m.refresh(ctx, st, []*policy.Policy{p}, now)
}

func (m *Metrics) refresh(ctx context.Context, st *store.Store, policies []*policy.Policy, now time.Time) error {
	if m == nil || st == nil {
		return nil
	}
	var errs []error
	for _, p := range policies {
		m.refreshPeriod(p, now)
	}

	if counts, err := st.ImageCountsByPolicyState(ctx); err != nil {
		errs = append(errs, err)
	} else {
		for _, p := range policies {
			byState := map[string]int{}
			for state, n := range counts[p.Name] {
				if state == "requested" {
					state = StateCreating // the intent row of an image being requested
				}
				byState[state] += n
			}
			m.withPolicy(p.Name, func() {
				for _, state := range imageStates {
					m.images.WithLabelValues(p.Name, state).Set(float64(byState[state]))
				}
			})
		}
	}

	if n, err := st.LeftoverSnapshotCount(ctx); err != nil {
		errs = append(errs, err)
	} else {
		m.leftover.Set(float64(n))
	}

	for _, p := range policies {
		rps, err := st.NewestGoodPerServer(ctx, p.Name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		without, oldest := 0, time.Time{}
		for _, rp := range rps {
			if rp.NewestGood.IsZero() {
				without++
				continue
			}
			if oldest.IsZero() || rp.NewestGood.Before(oldest) {
				oldest = rp.NewestGood
			}
		}
		m.withPolicy(p.Name, func() {
			m.serversNoGood.WithLabelValues(p.Name).Set(float64(without))
			// Servers without any good image are counted above, not given an
			// infinite age; with no good image at all there is no recovery point
			// to age, and the series is absent. The age itself is computed at
			// scrape time from this timestamp.
			m.newestGoodAge.set(p.Name, oldest)
		})
	}

	if last, err := st.LastSuccessfulSlots(ctx); err != nil {
		errs = append(errs, err)
	} else {
		for _, p := range policies {
			if t, ok := last[p.Name]; ok {
				m.SetLastSuccess(p.Name, t)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("refresh metrics: %w", err)
	}
	return nil
}

// refreshPeriod sets the policy's schedule period, recomputing it when the policy
// changed or the cached value is a day old.
func (m *Metrics) refreshPeriod(p *policy.Policy, now time.Time) {
	m.mu.Lock()
	c, ok := m.periods[p.Name]
	m.mu.Unlock()
	if ok && c.version == p.Version && now.Sub(c.at) < periodRecompute && !now.Before(c.at) {
		return
	}
	d := SchedulePeriod(p.Schedule, now)
	m.mu.Lock()
	m.periods[p.Name] = periodCache{version: p.Version, at: now}
	m.mu.Unlock()
	m.setSchedulePeriod(p.Name, d)
}
