package scheduler

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/imagekeeper/imagekeeper/store"
)

// slotClock is the part of *policy.Schedule the slot maths needs. Keeping it an
// interface lets the ledger rules be tested with a plain fixed-interval schedule.
type slotClock interface {
	// Next returns the first slot strictly after t, zero if there is none.
	Next(t time.Time) time.Time
	// Latest returns the most recent slot at or before t, zero if there is none.
	Latest(t time.Time) time.Time
}

// DefaultMaxMissedRows bounds how many missed slots of one policy are written
// individually when the daemon finds a gap: a policy on "@every 1m" that was down for
// a month would otherwise write 43,200 rows at start. The oldest row written says how
// many earlier slots it stands for.
const DefaultMaxMissedRows = 100

// countCap bounds the forward walk that counts the slots older than the ones written
// individually; beyond it the count is reported as a lower bound.
const countCap = 100_000

// pendingSlots is what came due for one policy in (after, now].
type pendingSlots struct {
	// latest is the most recent due slot; zero when nothing is due.
	latest time.Time
	// earlier lists the due slots before latest, oldest first, at most maxRows of them
	// (the most recent ones).
	earlier []time.Time
	// older counts due slots before earlier[0] that are not listed.
	older int
	// olderAtLeast is true when counting older stopped at countCap.
	olderAtLeast bool
}

// dueSlots walks the schedule back from now with Latest, so the cost is bounded by
// maxRows however long the gap is; only the count of the remainder walks forward.
func dueSlots(s slotClock, after, now time.Time, maxRows int) pendingSlots {
	var p pendingSlots
	l := s.Latest(now)
	if l.IsZero() || !l.After(after) {
		return p
	}
	p.latest = l
	t := l
	var rev []time.Time
	for {
		prev := s.Latest(t.Add(-time.Nanosecond))
		if prev.IsZero() || !prev.After(after) || !prev.Before(t) {
			break
		}
		if len(rev) == maxRows {
			// There are more: count them from the other end.
			oldest := rev[len(rev)-1]
			for n, x := 0, s.Next(after); !x.IsZero() && x.Before(oldest); n, x = n+1, s.Next(x) {
				if n == countCap {
					p.olderAtLeast = true
					break
				}
				p.older++
			}
			break
		}
		rev = append(rev, prev)
		t = prev
	}
	p.earlier = make([]time.Time, len(rev))
	for i, x := range rev {
		p.earlier[len(rev)-1-i] = x
	}
	return p
}

// slotRecord is one outcome the scheduler writes to the ledger.
type slotRecord struct {
	slot    time.Time
	outcome store.SlotOutcome
	reason  string
	// count is how many slots this record stands for in the metrics (1, or more for
	// the summary row).
	count int
}

// slotPlan is what to do with the due slots of one policy.
type slotPlan struct {
	// run is the slot to run now; zero for none.
	run time.Time
	// catchUp is true when run is a catch-up of a slot that was not taken on time.
	catchUp bool
	// records are the outcomes to write, oldest first.
	records []slotRecord
}

// planRules are the policy knobs that decide a slot's fate.
type planRules struct {
	catchUpLatest bool
	// maxLateness bounds how late a caught-up slot may be; 0 means no bound.
	maxLateness time.Duration
	// grace is how late a slot may be taken and still count as on time. At start it is
	// 0: any slot found due was missed while the daemon was down.
	grace time.Duration
	// missedReason says why the earlier slots were not taken.
	missedReason string
	maxRows      int
}

// planSlots applies the ledger rules: of the slots due in (after, now] only the most
// recent can run, on time when within the grace, as a catch-up when the policy says
// catch_up: latest and it is within max_lateness; every other due slot is missed.
func planSlots(s slotClock, after, now time.Time, r planRules) slotPlan {
	var plan slotPlan
	due := dueSlots(s, after, now, r.maxRows)
	if due.latest.IsZero() {
		return plan
	}
	for i, x := range due.earlier {
		rec := slotRecord{slot: x, outcome: store.OutcomeMissed, reason: r.missedReason, count: 1}
		if i == 0 && due.older > 0 {
			more := fmt.Sprintf("%d", due.older)
			if due.olderAtLeast {
				more = "at least " + more
			}
			rec.reason = fmt.Sprintf("%s; this row also stands for %s earlier missed slots since %s",
				r.missedReason, more, after.UTC().Format(time.RFC3339))
			rec.count += due.older
		}
		plan.records = append(plan.records, rec)
	}
	late := now.Sub(due.latest)
	switch {
	case late <= r.grace:
		plan.run = due.latest
	case !r.catchUpLatest:
		plan.records = append(plan.records, slotRecord{slot: due.latest, outcome: store.OutcomeMissed, count: 1,
			reason: fmt.Sprintf("%s (late by %s; catch_up is none)", r.missedReason, late.Round(time.Second))})
	case r.maxLateness > 0 && late > r.maxLateness:
		plan.records = append(plan.records, slotRecord{slot: due.latest, outcome: store.OutcomeMissed, count: 1,
			reason: fmt.Sprintf("%s (late by %s, beyond max_lateness %s)", r.missedReason,
				late.Round(time.Second), r.maxLateness)})
	default:
		plan.run = due.latest
		plan.catchUp = true
	}
	return plan
}

// StoreLedger adapts the lineage store to the Ledger the scheduler writes to.
func StoreLedger(st *store.Store) Ledger { return storeLedger{st} }

type storeLedger struct{ st *store.Store }

// LastSlot implements Ledger.
func (l storeLedger) LastSlot(ctx context.Context, policy string) (time.Time, bool, error) {
	sl, err := l.st.LastSlot(ctx, policy)
	if errors.Is(err, store.ErrNotFound) {
		return time.Time{}, false, nil
	}
	if err != nil {
		return time.Time{}, false, err
	}
	return sl.Slot, true, nil
}

// RecordSlot implements Ledger. A failed outcome is for a run that panicked: its row
// exists (RunSlot started it), so it is finished rather than recorded.
func (l storeLedger) RecordSlot(ctx context.Context, policy string, slot time.Time, outcome store.SlotOutcome, reason string) error {
	if outcome == store.OutcomeFailed {
		sl, err := l.st.SlotByKey(ctx, policy, slot)
		if err == nil {
			return l.st.FinishSlot(ctx, sl.ID, outcome, reason, sl.Counts)
		}
		if !errors.Is(err, store.ErrNotFound) {
			return err
		}
	}
	_, err := l.st.RecordSlot(ctx, store.Slot{Policy: policy, Slot: slot, Outcome: outcome, Reason: reason})
	return err
}
