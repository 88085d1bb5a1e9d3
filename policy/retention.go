package policy

import (
	"slices"
	"strconv"
	"strings"
	"time"
)

// RetentionStatus is where an image stands as far as retention is concerned.
type RetentionStatus string

// RetentionStatus values. The zero value is RetentionInProgress on purpose: an image
// whose outcome is not known to be good or failed is always kept, so a caller that
// forgets to set Status can only keep too much, never delete too much.
const (
	// RetentionInProgress is an image still being requested or created.
	RetentionInProgress RetentionStatus = ""
	// RetentionGood is an active image whose volume snapshots are all available.
	RetentionGood RetentionStatus = "good"
	// RetentionFailed is an image that will never become good (Nova deleted it,
	// a snapshot went to error, or it outlived its wait timeout).
	RetentionFailed RetentionStatus = "failed"
)

// FailedGrace is how long a failed image is kept after the later of its wait timeout
// and the moment it was declared failed. The hour gives an operator (and `imagekeeper
// why`) a window to look at a failure before the evidence is deleted, and it lets a
// late "actually it became active" answer from the cloud arrive before we act on a
// failure verdict that was only a timeout.
const FailedGrace = time.Hour

// RetentionImage is one image of one server under one policy, as Retain sees it.
type RetentionImage struct {
	// ID is the cloud's image id; it breaks ties between images of the same Time.
	ID string
	// Time is the image's slot: the scheduled instant it stands for, not the moment
	// the image became active. Buckets, ordering and keep_within all use it, so that
	// spread and slow snapshots never move an image into another bucket.
	Time time.Time
	// Status says whether the image counts towards the rules (only good ones do).
	Status RetentionStatus
	// FailReason is why a failed image failed; it becomes part of its reason.
	FailReason string
	// RequestedAt is when createImage was asked for; zero means Time.
	RequestedAt time.Time
	// FailedAt is when the image was declared failed; zero when unknown.
	FailedAt time.Time
	// WaitTimeout is the wait_timeout the image was requested under.
	WaitTimeout time.Duration
	// LateUntil is the end of the late window of an image failed by wait_timeout:
	// it is still watched and may yet become good, so it is kept until then.
	LateUntil time.Time
}

// FailedDeadline returns the instant after which a failed image may be deleted: the
// later of (RequestedAt, or Time when that is zero, or Time when it is later) plus
// WaitTimeout, FailedAt, and LateUntil, plus FailedGrace.
func (img RetentionImage) FailedDeadline() time.Time {
	start := img.Time
	if img.RequestedAt.After(start) {
		start = img.RequestedAt
	}
	end := start.Add(max(img.WaitTimeout, 0))
	if img.FailedAt.After(end) {
		end = img.FailedAt
	}
	if img.LateUntil.After(end) {
		end = img.LateUntil
	}
	return end.Add(FailedGrace)
}

// Decision is Retain's verdict on one image.
type Decision struct {
	ImageID string
	// Keep is true when the image stays.
	Keep bool
	// Reasons explains the verdict: every rule that keeps the image, or why it goes.
	// Never empty.
	Reasons []string
}

// Reason texts that carry no data.
const (
	ReasonNoRule       = "no rule keeps it"
	ReasonMinKeep      = "min_keep"
	ReasonFuture       = "in the future"
	ReasonInProgress   = "in progress"
	ReasonFailedGrace  = "failed, within grace"
	ReasonLateWatch    = "failed by wait_timeout, still watched in its late window"
	reasonFailedPrefix = "failed: "
)

// rule bits of one image's verdict, in the order their reasons are listed.
const (
	ruleLast uint8 = 1 << iota
	ruleHourly
	ruleDaily
	ruleWeekly
	ruleMonthly
	ruleYearly
	ruleWithin
	ruleMinKeep
)

// bucket is the state of one calendar rule while Retain walks the good images from
// the newest to the oldest.
type bucket struct {
	bit  uint8
	left int
	// last is the key of the previous image's bucket; min is the smallest key seen;
	// seen holds every key seen. Calendar keys are monotone in time nearly always, so
	// last and min settle almost every image without a scan; seen makes the rule
	// correct even where a zone's history moves the local calendar backwards.
	last, min int64
	started   bool
	seen      []int64
}

// newBucket reports whether key starts a bucket not seen before, and records it.
func (b *bucket) newBucket(key int64) bool {
	if b.started && key == b.last {
		return false
	}
	isNew := !b.started || key < b.min || !slices.Contains(b.seen, key)
	b.last = key
	if isNew {
		if b.seen == nil {
			// A rule keeps at most left more periods: one allocation for them all.
			b.seen = make([]int64, 0, b.left)
		}
		if !b.started || key < b.min {
			b.min = key
		}
		b.started = true
		b.seen = append(b.seen, key)
	}
	return isNew
}

// Calendar keys of a local time. Each is an integer that is equal for two instants
// exactly when they fall into the same bucket in the policy's zone.
func hourKey(t time.Time) int64 {
	// Local date, hour and UTC offset: the two 01:00 hours of a fall-back night are
	// two buckets, told apart by their offsets (as the reason shows them). Offsets
	// lie within ±14h, so offset+15h fits the six low decimal digits.
	y, m, d := t.Date()
	_, off := t.Zone()
	return ((int64(y)*10000+int64(m)*100+int64(d))*100+int64(t.Hour()))*1_000_000 + int64(off) + 15*3600
}

func dayKey(t time.Time) int64 {
	y, m, d := t.Date()
	return int64(y)*10000 + int64(m)*100 + int64(d)
}

func weekKey(t time.Time) int64 {
	y, w := t.ISOWeek()
	return int64(y)*100 + int64(w)
}

func monthKey(t time.Time) int64 {
	y, m, _ := t.Date() // one zone lookup, not one for Year and one for Month
	return int64(y)*100 + int64(m)
}

func yearKey(t time.Time) int64 {
	return int64(t.Year())
}

// Retain decides which images of one server under one policy stay and which go, and
// why. It is pure: no clock, no I/O; the same input in any order gives the same
// output, sorted newest first (by Time, then ID).
//
// The rules, OR-ed as in restic's forget:
//   - keep_last N keeps the N newest good images;
//   - keep_hourly/daily/weekly/monthly/yearly N keep the newest good image of each of
//     the N newest calendar periods (in loc; weeks are ISO weeks, starting Monday)
//     that hold a good image, so a gap in the backups does not use up the count;
//   - keep_within D keeps every good image less than D older than the newest good
//     image, never measured from now: if backups stop, nothing ages out;
//   - min_keep M (at least 1, whatever r says) then keeps the newest good images no
//     rule kept until M good images are kept.
//
// Only good images count towards the rules. Images whose Time is after now are kept
// ("in the future") and take no part in the rules at all, because a slot in the future
// means a clock problem, and decisions about the past must not depend on it. Images in
// progress are kept. A failed image is kept until FailedDeadline has passed, then
// deleted. MaxDeletionsPerRun and WhenServerGone are the caller's business.
//
// A nil loc means UTC. IDs are expected to be unique.
func Retain(images []RetentionImage, r Retention, loc *time.Location, now time.Time) []Decision {
	var rt Retainer
	return rt.Retain(images, r, loc, now)
}

// Retainer is Retain with scratch memory kept from one call to the next: a caller
// that decides many servers one after another (a prune over a million rows) then
// allocates per server only the reason texts that carry data, not the order, the
// rule masks, the decisions and their reasons' backing array every time. The zero
// value is ready to use; a Retainer is not safe for concurrent use.
type Retainer struct {
	order   []int
	masks   []uint8
	out     []Decision
	backing []string
	seen    [5][]int64
}

// Retain is the package's Retain, and decides exactly the same. The decisions and
// their Reasons slices live in the Retainer's memory: they are valid until the next
// call, so a caller that keeps any of them past it must copy them (slices.Clone of
// the Reasons; the strings themselves are never overwritten). A nil Retainer
// allocates afresh, like Retain.
func (rt *Retainer) Retain(images []RetentionImage, r Retention, loc *time.Location, now time.Time) []Decision {
	if len(images) == 0 {
		return nil
	}
	if rt == nil {
		rt = &Retainer{}
	}
	if loc == nil {
		loc = time.UTC
	}
	order := grow(rt.order, len(images))
	rt.order = order
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int {
		ia, ib := &images[a], &images[b]
		if c := ib.Time.Compare(ia.Time); c != 0 {
			return c
		}
		if c := strings.Compare(ia.ID, ib.ID); c != 0 {
			return c
		}
		// Only reachable with duplicate ids; still, the output must not depend on
		// the input order.
		return strings.Compare(string(ia.Status), string(ib.Status))
	})

	// Pass 1: which rules keep each good image that is not in the future.
	masks := grow(rt.masks, len(images)) // by position in order
	rt.masks = masks
	clear(masks)
	lastRank := 0
	keepLast := max(r.KeepLast, 0)
	buckets := [...]struct {
		bucket
		key func(time.Time) int64
	}{
		{bucket{bit: ruleHourly, left: max(r.KeepHourly, 0)}, hourKey},
		{bucket{bit: ruleDaily, left: max(r.KeepDaily, 0)}, dayKey},
		{bucket{bit: ruleWeekly, left: max(r.KeepWeekly, 0)}, weekKey},
		{bucket{bit: ruleMonthly, left: max(r.KeepMonthly, 0)}, monthKey},
		{bucket{bit: ruleYearly, left: max(r.KeepYearly, 0)}, yearKey},
	}
	for b := range buckets {
		buckets[b].seen = rt.seen[b][:0]
	}
	defer func() {
		for b := range buckets {
			rt.seen[b] = buckets[b].seen
		}
	}()
	var anchor time.Time // the newest good image that is not in the future
	haveAnchor := false
	keptGood := 0
	for k, i := range order {
		img := &images[i]
		if img.Status != RetentionGood || img.Time.After(now) {
			continue
		}
		if !haveAnchor {
			anchor, haveAnchor = img.Time, true
		}
		var m uint8
		if lastRank < keepLast {
			lastRank++
			m |= ruleLast
		}
		lt := img.Time.In(loc)
		for b := range buckets {
			bk := &buckets[b]
			if bk.left > 0 && bk.newBucket(bk.key(lt)) {
				bk.left--
				m |= bk.bit
			}
		}
		// Strictly within: an image exactly D older than the newest is outside, as
		// with restic's --keep-within.
		if r.KeepWithin > 0 && img.Time.After(anchor.Add(-r.KeepWithin)) {
			m |= ruleWithin
		}
		masks[k] = m
		if m != 0 {
			keptGood++
		}
	}

	// Pass 2: the min_keep floor, newest first. It is clamped to 1 so that the newest
	// good image survives any rule set, even one the loader should have refused.
	minKeep := max(r.MinKeep, 1)
	for k, i := range order {
		if keptGood >= minKeep {
			break
		}
		img := &images[i]
		if img.Status != RetentionGood || img.Time.After(now) || masks[k] != 0 {
			continue
		}
		masks[k] = ruleMinKeep
		keptGood++
	}

	// Pass 3: reasons. One backing array serves every decision's Reasons; each gets
	// a full slice expression so that an append by a caller cannot clobber another's.
	out := grow(rt.out, len(images))
	rt.out = out
	backing := rt.backing[:0]
	if cap(backing) < 2*len(images) {
		backing = make([]string, 0, 2*len(images))
	}
	// Kept with whatever capacity the appends below grew it to.
	defer func() { rt.backing = backing[:0] }()
	lastRank = 0
	var buf [64]byte
	for k, i := range order {
		img := &images[i]
		start := len(backing)
		keep := true
		switch {
		case img.Time.After(now):
			backing = append(backing, ReasonFuture)
			switch img.Status {
			case RetentionFailed:
				backing = append(backing, failedReason(img.FailReason))
			case RetentionGood:
			default:
				backing = append(backing, ReasonInProgress)
			}
		case img.Status == RetentionGood:
			m := masks[k]
			if m == 0 {
				keep = false
				backing = append(backing, ReasonNoRule)
				break
			}
			if m&ruleLast != 0 {
				lastRank++
				b := append(buf[:0], "keep_last "...)
				b = strconv.AppendInt(b, int64(lastRank), 10)
				b = append(b, '/')
				b = strconv.AppendInt(b, int64(keepLast), 10)
				backing = append(backing, string(b))
			}
			lt := img.Time.In(loc)
			if m&ruleHourly != 0 {
				backing = append(backing, string(lt.AppendFormat(append(buf[:0], "keep_hourly "...), "2006-01-02T15:00Z07:00")))
			}
			if m&ruleDaily != 0 {
				backing = append(backing, string(lt.AppendFormat(append(buf[:0], "keep_daily "...), "2006-01-02")))
			}
			if m&ruleWeekly != 0 {
				y, w := lt.ISOWeek()
				b := append(buf[:0], "keep_weekly "...)
				b = strconv.AppendInt(b, int64(y), 10)
				b = append(b, "-W"...)
				if w < 10 {
					b = append(b, '0')
				}
				b = strconv.AppendInt(b, int64(w), 10)
				backing = append(backing, string(b))
			}
			if m&ruleMonthly != 0 {
				backing = append(backing, string(lt.AppendFormat(append(buf[:0], "keep_monthly "...), "2006-01")))
			}
			if m&ruleYearly != 0 {
				backing = append(backing, string(lt.AppendFormat(append(buf[:0], "keep_yearly "...), "2006")))
			}
			if m&ruleWithin != 0 {
				backing = append(backing, "keep_within "+FormatRetentionDuration(r.KeepWithin))
			}
			if m&ruleMinKeep != 0 {
				backing = append(backing, ReasonMinKeep)
			}
		case img.Status == RetentionFailed:
			backing = append(backing, failedReason(img.FailReason))
			if now.Before(img.LateUntil) {
				backing = append(backing, ReasonLateWatch)
			} else if !now.After(img.FailedDeadline()) {
				backing = append(backing, ReasonFailedGrace)
			} else {
				keep = false
			}
		default:
			backing = append(backing, ReasonInProgress)
		}
		end := len(backing)
		out[k] = Decision{ImageID: img.ID, Keep: keep, Reasons: backing[start:end:end]}
	}
	return out
}

// grow returns a slice of length n, s's array when it is large enough.
func grow[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	return s[:n]
}

func failedReason(why string) string {
	if why == "" {
		why = "unknown reason"
	}
	return reasonFailedPrefix + why
}

// FormatRetentionDuration renders a duration the way reasons show it: whole hours as
// "48h", anything else as time.Duration does.
func FormatRetentionDuration(d time.Duration) string {
	if d > 0 && d%time.Hour == 0 {
		return strconv.FormatInt(int64(d/time.Hour), 10) + "h"
	}
	return d.String()
}
