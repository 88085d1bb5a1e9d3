package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/imagekeeper/imagekeeper/store"
)

// lineage is what the soak reads from a copy of the daemon's database.
type lineage struct {
	owner  string
	images []store.Image
	snaps  []store.Snapshot
	slots  []store.Slot
	drills []store.Drill
	// lateGood holds the rows that became good after wait_timeout.
	lateGood map[int64]bool
}

// readLineage copies the database (and its WAL) into dir and reads the copy, so the
// daemon's own file is never opened for writing by the soak.
func readLineage(ctx context.Context, dbPath, dir string, full bool) (*lineage, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	dst := filepath.Join(dir, filepath.Base(dbPath))
	for _, suffix := range []string{"", "-wal"} {
		_ = os.Remove(dst + suffix)
		if err := copyFile(dbPath+suffix, dst+suffix); err != nil && !(suffix != "" && os.IsNotExist(err)) {
			return nil, err
		}
	}
	_ = os.Remove(dst + "-shm")
	st, err := store.Open(ctx, dst, store.Options{})
	if err != nil {
		return nil, err
	}
	defer st.Close()
	l := &lineage{owner: st.Owner()}
	if !full {
		return l, nil
	}
	if l.images, err = st.Images(ctx, store.ImageFilter{}); err != nil {
		return nil, err
	}
	if l.snaps, err = st.SnapshotsByState(ctx, store.SnapshotCreating, store.SnapshotAvailable, store.SnapshotError,
		store.SnapshotMissing, store.SnapshotDeleting, store.SnapshotDeleted, store.SnapshotKeptInUse,
		store.SnapshotErrorDeleting); err != nil {
		return nil, err
	}
	if l.slots, err = st.Slots(ctx, store.SlotFilter{}); err != nil {
		return nil, err
	}
	if l.drills, err = st.Drills(ctx); err != nil {
		return nil, err
	}
	evs, err := st.Events(ctx, store.EventFilter{Kind: "image_late_good"})
	if err != nil {
		return nil, err
	}
	l.lateGood = map[int64]bool{}
	for _, e := range evs {
		l.lateGood[e.ImageRow] = true
	}
	return l, nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// request is one line of the simulator's request log (simcloud -v).
type request struct {
	at               time.Time
	method, path, op string
}

var requestLine = regexp.MustCompile(`^time=(\S+) .*msg="simcloud request" method=(\S+) path=(\S+) op=(\S+)`)

func readRequests(logPath string) ([]request, error) {
	f, err := os.Open(logPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []request
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if m := requestLine.FindStringSubmatch(sc.Text()); m != nil {
			at, _ := time.Parse(time.RFC3339Nano, m[1])
			out = append(out, request{at: at, method: m[2], path: strings.Trim(m[3], `"`), op: m[4]})
		}
	}
	return out, sc.Err()
}

// lastSeg returns the id at the end of a request path (query stripped).
func lastSeg(p string) string {
	if i := strings.IndexByte(p, '?'); i >= 0 {
		p = p[:i]
	}
	return path.Base(p)
}

// result is the soak's verdict.
type result struct {
	slots, kills, faults, images, starts, selfExits, notReady int
	readyMax                                                  time.Duration
	outcomes                                                  map[string]int
	states                                                    map[string]int
	faultKinds                                                map[string]int
	requests                                                  int
	imageDeletes, snapshotDeletes                             int
	pendingJournal, pendingFailed, keptInUse                  int
	drills                                                    map[string]int // by result
	drillsInterrupted                                         int

	drillLeftovers int

	duplicates, untracked, leftovers, wrongDeletions, noOutcome, missingSlots, lost int
	// failedRule: an image that was good (late-good included) deleted by the failed
	// rule; hollowGood: a row still good at the end whose volume snapshot is gone or
	// in error (it would count towards min_keep); inFlight: a createImage of a server
	// while the policy's earlier image of it was in flight (within wait_timeout).
	failedRule, hollowGood, inFlight int
	// keptByConfig: a Glance DELETE of an image that the config in force at that
	// instant keeps (its policy absent or disabled then, or the image among its
	// server's keep_last newest good ones); reloads counts the config changes.
	keptByConfig, reloads, unattributed int
	// attributed, keepChecked: deletes attributed to a config version, and of
	// those the good ones checked against keep_last; keepTight of them left exactly
	// keep_last newer ones; keepMargin is the least surplus seen.
	attributed, keepChecked, keepTight, keepMargin int
	// hookUnpaired: a (server, slot) of the hooked policy whose pre and post hook
	// runs differ in number: every pre must have exactly one post.
	hookUnpaired, hookPres int
	lateGood, hollowed     int
	details                []string
}

func (r *result) violate(counter *int, format string, args ...any) {
	*counter++
	if len(r.details) < 60 {
		r.details = append(r.details, fmt.Sprintf(format, args...))
	}
}

func (r *result) violations() int {
	return r.duplicates + r.untracked + r.leftovers + r.wrongDeletions + r.noOutcome + r.missingSlots + r.lost +
		r.failedRule + r.hollowGood + r.inFlight + r.drillLeftovers + r.hookUnpaired + r.keptByConfig
}

// failing counts the violations that fail the soak: all but the kinds named in
// known (a comma-separated list of counter names from the last line).
func (r *result) failing(known string) int {
	skip := map[string]bool{}
	for _, k := range strings.Split(known, ",") {
		skip[strings.TrimSpace(k)] = true
	}
	n := 0
	for name, v := range map[string]int{"duplicates": r.duplicates, "untracked": r.untracked, "leftovers": r.leftovers,
		"wrong_deletions": r.wrongDeletions, "no_outcome": r.noOutcome, "missing_slots": r.missingSlots, "lost": r.lost,
		"failed_rule": r.failedRule, "hollow_good": r.hollowGood, "in_flight": r.inFlight,
		"drill_leftovers": r.drillLeftovers, "hook_unpaired": r.hookUnpaired, "kept_by_config": r.keptByConfig} {
		if !skip[name] {
			n += v
		}
	}
	return n
}

func (r *result) line() string {
	drills := 0
	for _, n := range r.drills {
		drills += n
	}
	return fmt.Sprintf("soak: slots=%d kills=%d faults=%d images=%d duplicates=%d untracked=%d leftovers=%d wrong_deletions=%d no_outcome=%d missing_slots=%d lost=%d failed_rule=%d hollow_good=%d in_flight=%d late_good=%d hollowed=%d drills=%d drill_leftovers=%d hook_pres=%d hook_unpaired=%d reloads=%d kept_by_config=%d",
		r.slots, r.kills, r.faults, r.images, r.duplicates, r.untracked, r.leftovers, r.wrongDeletions, r.noOutcome, r.missingSlots, r.lost,
		r.failedRule, r.hollowGood, r.inFlight, r.lateGood, r.hollowed, drills, r.drillLeftovers, r.hookPres, r.hookUnpaired, r.reloads, r.keptByConfig)
}

func (r *result) report(s *soak) string {
	var b strings.Builder
	fmt.Fprintf(&b, "soak: daemon starts=%d kill9=%d self_exits=%d not_ready_within_30s=%d slowest_ready=%s\n",
		r.starts, r.kills, r.selfExits, r.notReady, r.readyMax.Round(time.Millisecond))
	fmt.Fprintf(&b, "soak: faults by kind: %s\n", kv(r.faultKinds))
	fmt.Fprintf(&b, "soak: slot outcomes: %s\n", kv(r.outcomes))
	fmt.Fprintf(&b, "soak: lineage image states: %s\n", kv(r.states))
	fmt.Fprintf(&b, "soak: restore drills by result: %s; interrupted (kill -9, finished by the cleanup)=%d\n", kv(r.drills), r.drillsInterrupted)
	fmt.Fprintf(&b, "soak: config reloads written=%d; image deletes attributed to the version in force=%d (not attributable=%d), good ones checked against its keep_last=%d, of which exactly at keep_last=%d, least surplus=%d\n",
		r.reloads, r.attributed, r.unattributed, r.keepChecked, r.keepTight, r.keepMargin)
	fmt.Fprintf(&b, "soak: cloud requests=%d image_deletes=%d snapshot_deletes=%d\n", r.requests, r.imageDeletes, r.snapshotDeletes)
	fmt.Fprintf(&b, "soak: open journals (image gone, snapshot retry scheduled)=%d failed images' snapshots awaiting FailedGrace=%d kept_in_use=%d\n",
		r.pendingJournal, r.pendingFailed, r.keptInUse)
	for _, c := range s.converge {
		fmt.Fprintf(&b, "soak: converge: %s\n", c)
	}
	for _, d := range r.details {
		fmt.Fprintf(&b, "soak: VIOLATION %s\n", d)
	}
	return strings.TrimRight(b.String(), "\n")
}

func kv(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%d", k, m[k])
	}
	return strings.Join(parts, " ")
}

// check compares the simulator's final state, its request log and the lineage.
func (s *soak) check(ctx context.Context) (*result, error) {
	st, err := s.sim.state(ctx)
	if err != nil {
		return nil, err
	}
	l, err := readLineage(ctx, s.dbPath, filepath.Join(s.opts.Workdir, "final-copy"), true)
	if err != nil {
		return nil, fmt.Errorf("read the lineage: %w", err)
	}
	reqs, err := readRequests(filepath.Join(s.opts.Workdir, "simcloud.log"))
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, im := range st.Images {
		if _, ok := s.seen[im.ID]; !ok {
			s.seen[im.ID] = im
		}
	}
	r := &result{kills: s.kills, starts: s.starts, selfExits: s.selfExits, notReady: s.notReady, readyMax: s.readyMax,
		outcomes: map[string]int{}, states: map[string]int{}, faultKinds: s.faults, drills: map[string]int{}}

	// drill_leftovers: after convergence no drill server, no volume made by a drill,
	// and no drill the journal does not record done (kill -9 during drills included).
	for _, d := range l.drills {
		r.drills[d.Result]++
		if d.Result == store.VerifyInterrupted {
			r.drillsInterrupted++
		}
		if d.State != store.DrillDone {
			r.violate(&r.drillLeftovers, "drill_leftovers: drill %s (policy %s, image %s) is %s in the journal, not done",
				d.Token, d.Policy, d.ImageID, d.State)
		}
	}
	for _, sv := range st.Servers {
		if sv.Metadata["imagekeeper_drill"] != "" {
			r.violate(&r.drillLeftovers, "drill_leftovers: drill server %s (%s, %s) still exists", sv.ID, sv.Name, sv.Status)
		}
	}
	for _, v := range st.Volumes {
		r.violate(&r.drillLeftovers, "drill_leftovers: volume %s made from snapshot %s is still there (%s, server %q)",
			v.ID, v.SnapshotID, v.Status, v.ServerID)
	}
	if err := r.checkHooks(filepath.Join(s.opts.Workdir, "hooks", "hooks.log")); err != nil {
		return nil, err
	}
	for _, n := range s.faults {
		r.faults += n
	}
	for _, n := range st.Requests {
		r.requests += n
	}

	final := map[string]simImage{}
	for _, im := range st.Images {
		final[im.ID] = im
	}
	finalSnaps := map[string]simSnapshot{}
	for _, sn := range st.Snapshots {
		finalSnaps[sn.ID] = sn
	}
	byImageID := map[string]store.Image{}
	byRow := map[int64]store.Image{}
	for _, im := range l.images {
		byRow[im.Row] = im
		r.states[string(im.State)]++
		if im.ImageID != "" {
			byImageID[im.ImageID] = im
			r.images++
		}
	}
	snapRow := map[string]store.Snapshot{}
	for _, sn := range l.snaps {
		snapRow[sn.SnapshotID] = sn
	}
	// snapOwner maps a snapshot to the image that named it, from the lineage or, for
	// snapshots the lineage never recorded, from what the simulator showed.
	snapOwner := map[string]string{}
	for id, im := range s.seen {
		for _, sn := range im.SnapshotIDs {
			snapOwner[sn] = id
		}
	}
	for _, sn := range l.snaps {
		if im, ok := byRow[sn.ImageRow]; ok && im.ImageID != "" {
			snapOwner[sn.SnapshotID] = im.ImageID
		}
	}

	// duplicates: two images in the cloud for one (policy, server, slot).
	keys := map[string][]string{}
	for id, im := range s.seen {
		if s.ours(im) {
			k := im.Properties["imagekeeper_policy"] + "|" + im.Properties["imagekeeper_server"] + "|" + im.Properties["imagekeeper_slot"]
			keys[k] = append(keys[k], id)
		}
	}
	for k, ids := range keys {
		if len(ids) > 1 {
			sort.Strings(ids)
			r.violate(&r.duplicates, "duplicate: %d images for (policy, server, slot) %s: %s", len(ids), k, strings.Join(ids, " "))
		}
	}

	// untracked: stamped by our createImage, still in the cloud, no lineage row.
	for _, im := range st.Images {
		if s.ours(im) {
			if _, ok := byImageID[im.ID]; !ok {
				r.violate(&r.untracked, "untracked: image %s (%s, %s) of server %s slot %s carries our stamp and has no lineage row",
					im.ID, im.Name, im.Status, im.ServerID, im.Properties["imagekeeper_slot"])
			}
		}
	}

	// lost: the lineage says good, the cloud has nothing.
	for _, im := range l.images {
		if im.State == store.ImageGood && im.ImageID != "" {
			if _, ok := final[im.ImageID]; !ok {
				r.violate(&r.lost, "lost: lineage row %d says image %s of server %s slot %s is good; the cloud has no such image",
					im.Row, im.ImageID, im.ServerID, im.Slot.Format(time.RFC3339))
			}
		}
	}

	// leftovers: snapshots of images the lineage records as deleted (or whose image is
	// gone while the lineage still calls it good).
	for _, sn := range st.Snapshots {
		imgID, ok := snapOwner[sn.ID]
		if !ok {
			continue
		}
		row, hasRow := byImageID[imgID]
		if _, alive := final[imgID]; alive || !hasRow {
			continue
		}
		if sn.DependentVolumes > 0 || snapRow[sn.ID].State == store.SnapshotKeptInUse {
			r.keptInUse++
			continue
		}
		switch row.State {
		case store.ImageDeleted:
			r.violate(&r.leftovers, "leftover: snapshot %s (%s) of image %s, which lineage row %d records as deleted",
				sn.ID, sn.Status, imgID, row.Row)
		case store.ImageDeleting, store.ImageKeptProtected:
			r.pendingJournal++
		case store.ImageFailed:
			r.pendingFailed++
		default:
			r.violate(&r.leftovers, "leftover: snapshot %s (%s) of image %s, gone from the cloud while lineage row %d is %s",
				sn.ID, sn.Status, imgID, row.Row, row.State)
		}
	}

	// wrong deletions, from the request log.
	deletedImageAt := map[string]int{}
	for i, q := range reqs {
		if q.method != "DELETE" {
			continue
		}
		switch q.op {
		case "image.delete":
			r.imageDeletes++
			id := lastSeg(q.path)
			if _, ok := deletedImageAt[id]; !ok {
				deletedImageAt[id] = i
			}
			row, ours := byImageID[id]
			switch {
			case s.decoyImages[id] != "":
				r.violate(&r.wrongDeletions, "wrong deletion: DELETE image %s, a decoy (%s)", id, s.decoyImages[id])
			case !ours:
				r.violate(&r.wrongDeletions, "wrong deletion: DELETE image %s, which has no lineage row", id)
			case row.Owner != s.owner:
				r.violate(&r.wrongDeletions, "wrong deletion: DELETE image %s, owned by %q", id, row.Owner)
			}
		case "volume.snapshots.delete":
			r.snapshotDeletes++
			id := lastSeg(q.path)
			imgID, known := snapOwner[id]
			_, inLineage := snapRow[id]
			switch {
			case s.decoySnaps[id] != "":
				r.violate(&r.wrongDeletions, "wrong deletion: DELETE snapshot %s, a decoy (%s)", id, s.decoySnaps[id])
			case !inLineage:
				r.violate(&r.wrongDeletions, "wrong deletion: DELETE snapshot %s, which has no lineage row", id)
			case known && final[imgID].ID != "":
				r.violate(&r.wrongDeletions, "wrong deletion: DELETE snapshot %s while its image %s still exists", id, imgID)
			case known:
				if at, asked := deletedImageAt[imgID]; !asked || at > i {
					if _, wasOurs := byImageID[imgID]; wasOurs && !asked {
						// Nova deleted the image itself (a failed snapshot); no DELETE needed.
						break
					}
					r.violate(&r.wrongDeletions, "wrong deletion: DELETE snapshot %s before its image %s was deleted", id, imgID)
				}
			}
		}
	}
	for id, why := range s.decoyImages {
		if _, ok := final[id]; !ok {
			r.violate(&r.wrongDeletions, "wrong deletion: decoy image %s (%s) is gone", id, why)
		}
	}
	for id, why := range s.decoySnaps {
		if _, ok := finalSnaps[id]; !ok {
			r.violate(&r.wrongDeletions, "wrong deletion: decoy snapshot %s (%s) is gone", id, why)
		}
	}
	for id := range s.protected {
		if _, ok := final[id]; !ok {
			r.violate(&r.wrongDeletions, "wrong deletion: protected image %s is gone", id)
		}
	}
	for id := range s.inUse {
		if _, ok := finalSnaps[id]; !ok {
			r.violate(&r.wrongDeletions, "wrong deletion: snapshot %s, which a volume depends on, is gone", id)
		}
	}
	// min_keep: a live server selected by a policy keeps min_keep good images once
	// it has had that many.
	live := map[string]simServer{}
	for _, sv := range st.Servers {
		live[sv.ID] = sv
	}
	for _, p := range soakPolicies {
		ever, present := map[string]int{}, map[string]int{}
		for _, im := range l.images {
			if im.Policy != p.Name || im.ActiveAt.IsZero() {
				continue
			}
			ever[im.ServerID]++
			if _, ok := final[im.ImageID]; ok && (im.State == store.ImageGood || im.State == store.ImageKeptProtected) {
				present[im.ServerID]++
			}
		}
		for sv, n := range ever {
			if _, ok := live[sv]; ok && n >= p.MinKeep && present[sv] < p.MinKeep {
				r.violate(&r.wrongDeletions, "wrong deletion: policy %s server %s has %d good images in the cloud, min_keep is %d (it had %d)",
					p.Name, sv, present[sv], p.MinKeep, n)
			}
		}
	}

	// failed_rule: an image that was good deleted by the failed rule. A late-good
	// image is good; only a hollow one, or one whose image is gone, may be deleted as
	// failed after it was good.
	r.lateGood, r.hollowed = len(l.lateGood), len(s.hollowed)
	for _, im := range l.images {
		if im.ActiveAt.IsZero() || !strings.HasPrefix(im.DeleteReason, "failed") {
			continue
		}
		if strings.Contains(im.DeleteReason, "hollow") || strings.Contains(im.DeleteReason, "gone from the cloud") {
			continue
		}
		r.violate(&r.failedRule, "failed rule: row %d (image %s, late good %v) became good at %s and was deleted as %q",
			im.Row, im.ImageID, l.lateGood[im.Row], im.ActiveAt.Format(time.RFC3339), im.DeleteReason)
	}
	// kept_by_config: no image deleted that the config in force at the DELETE keeps.
	tl, err := s.appliedTimeline()
	if err != nil {
		return nil, fmt.Errorf("read the applied config versions: %w", err)
	}
	r.reloads = s.reloads
	s.checkKeptByConfig(r, l, reqs, tl)

	// hollow_good: a good row whose volume snapshot is gone or in error.
	snapsOf := map[int64][]store.Snapshot{}
	for _, sn := range l.snaps {
		snapsOf[sn.ImageRow] = append(snapsOf[sn.ImageRow], sn)
	}
	for _, im := range l.images {
		if im.State != store.ImageGood {
			continue
		}
		for _, sn := range snapsOf[im.Row] {
			if cs, ok := finalSnaps[sn.SnapshotID]; !ok || cs.Status == "error" {
				r.violate(&r.hollowGood, "hollow counted as good: row %d (image %s, server %s) is good; its snapshot %s is %s",
					im.Row, im.ImageID, im.ServerID, sn.SnapshotID, map[bool]string{true: cs.Status, false: "gone"}[ok])
				break
			}
		}
	}
	// in_flight: createImage of a server while the policy's earlier image of it was
	// in flight: requested, and neither good nor failed nor past wait_timeout.
	waitTimeout := 20 * time.Second
	type psKey struct{ policy, server string }
	attempts := map[psKey][]store.Image{}
	for _, im := range l.images {
		if im.Attempts > 0 && !im.RequestedAt.IsZero() {
			k := psKey{im.Policy, im.ServerID}
			attempts[k] = append(attempts[k], im)
		}
	}
	for _, ims := range attempts {
		sort.Slice(ims, func(i, j int) bool { return ims[i].RequestedAt.Before(ims[j].RequestedAt) })
		for i := 1; i < len(ims); i++ {
			a, b := ims[i-1], ims[i]
			end := a.RequestedAt.Add(waitTimeout)
			for _, t := range []time.Time{a.ActiveAt, a.FailedAt} {
				if !t.IsZero() && t.Before(end) {
					end = t
				}
			}
			if b.RequestedAt.Before(end) && !b.Slot.Equal(a.Slot) {
				r.violate(&r.inFlight, "in flight: policy %s server %s: createImage for slot %s at %s while the image of slot %s (row %d) was in flight until %s",
					a.Policy, a.ServerID, b.Slot.Format(time.RFC3339), b.RequestedAt.Format(time.RFC3339Nano),
					a.Slot.Format(time.RFC3339), a.Row, end.Format(time.RFC3339Nano))
			}
		}
	}

	// slots: every row has an outcome; between a policy's first and last row every
	// slot instant has a row, or a missed row says it stands for the gap.
	every := map[string]time.Duration{}
	for _, p := range soakPolicies {
		every[p.Name] = p.Every
	}
	byPolicy := map[string][]store.Slot{}
	for _, sl := range l.slots {
		r.slots++
		r.outcomes[string(sl.Outcome)]++
		if sl.Outcome == store.OutcomeRunning || sl.Outcome == "" {
			r.violate(&r.noOutcome, "no outcome: slot %s %s is %q after the daemon stopped (started %s)",
				sl.Policy, sl.Slot.Format(time.RFC3339), sl.Outcome, sl.StartedAt.Format(time.RFC3339))
		}
		byPolicy[sl.Policy] = append(byPolicy[sl.Policy], sl)
	}
	for name, sls := range byPolicy {
		sort.Slice(sls, func(i, j int) bool { return sls[i].Slot.Before(sls[j].Slot) })
		for i := 1; i < len(sls); i++ {
			gap := sls[i].Slot.Sub(sls[i-1].Slot)
			if e := every[name]; e > 0 && gap > e && !strings.Contains(sls[i].Reason, "stands for") &&
				!s.inactiveDuring(tl, name, sls[i-1].Slot.Add(-e), sls[i].Slot.Add(e)) {
				r.violate(&r.missingSlots, "missing slots: policy %s has no row for the %d slot(s) between %s and %s",
					name, int(gap/e)-1, sls[i-1].Slot.Format(time.RFC3339), sls[i].Slot.Format(time.RFC3339))
			}
		}
	}
	return r, nil
}

// checkHooks pairs the hook runs the db policy's script logged: for every (server,
// slot) as many posts as pres (one each, and a kill -9 between them is made up for
// by the next start).
func (r *result) checkHooks(path string) error {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read the hooks log: %w", err)
	}
	pre, post := map[string]int{}, map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		key := f[1] + " " + f[2]
		switch f[0] {
		case "pre":
			pre[key]++
			r.hookPres++
		case "post":
			post[key]++
		}
	}
	keys := map[string]bool{}
	for k := range pre {
		keys[k] = true
	}
	for k := range post {
		keys[k] = true
	}
	for k := range keys {
		if pre[k] != post[k] {
			r.violate(&r.hookUnpaired, "hook_unpaired: server and slot %s: %d pre, %d post hook runs", k, pre[k], post[k])
		}
	}
	return nil
}
