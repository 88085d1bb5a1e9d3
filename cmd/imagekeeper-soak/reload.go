package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/imagekeeper/imagekeeper/store"
)

// Config reloads during the run (issue 11 item 7): the soak rewrites the policy file
// at random moments (keep_last raised and lowered, a policy disabled or removed and
// brought back) and retags servers so that a policy selects nothing. It records every
// version it wrote; the daemon logs every version it applied. The kept_by_config
// check attributes each Glance DELETE to the version in force at that instant.

// policyState is one policy's part of a config version the soak wrote.
type policyState struct {
	KeepLast int
	// Mode is "on", "disabled" or "absent".
	Mode string
}

// cfgVersion is a policy file the soak wrote.
type cfgVersion struct {
	Version  string // as the daemon computes it: the first 6 bytes of its sha256, hex
	Policies map[string]policyState
	Desc     string
}

// cfgEvent is a moment from which a config version is in force.
type cfgEvent struct {
	At      time.Time
	Version string
	Source  string // "written", "daemon start", "daemon reload", "converge"
}

// retag is an interval during which a policy's servers were retagged out of it.
type retag struct {
	Policy   string
	From, To time.Time
}

var keepLastRE = regexp.MustCompile(`keep_last: \d+`)

// baseState is the config the soak starts and ends with.
func baseState() map[string]policyState {
	m := map[string]policyState{}
	for _, p := range soakPolicies {
		m[p.Name] = policyState{KeepLast: p.KeepLast, Mode: "on"}
	}
	return m
}

// renderConfig renders the policy file for a state; desc is logged with it.
func (s *soak) renderConfig(state map[string]policyState) []byte {
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "# written by imagekeeper-soak (seed %d)\ncloud: simcloud\nstate: %s\nlisten: %s\n", s.opts.Seed, s.dbPath, s.listen)
	cfg.WriteString("allow_sub_minute: true\nlimits: {concurrency: 8, requests_per_second: 200}\npolicies:")
	for _, p := range soakPolicies {
		ps := state[p.Name]
		if ps.Mode == "absent" {
			continue
		}
		y := keepLastRE.ReplaceAllString(strings.ReplaceAll(p.YAML, "HOOKDIR", s.hookDir), fmt.Sprintf("keep_last: %d", ps.KeepLast))
		if ps.Mode == "disabled" {
			y = strings.Replace(y, "  - name: "+p.Name+"\n", "  - name: "+p.Name+"\n    enabled: false\n", 1)
		}
		cfg.WriteString(y)
	}
	return []byte(cfg.String())
}

func configVersion(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:6])
}

// writeConfig writes the policy file for state atomically (a rename, as a config
// management tool would) and records the version with its time.
func (s *soak) writeConfig(state map[string]policyState, desc string) error {
	data := s.renderConfig(state)
	tmp := s.cfgPath + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, s.cfgPath); err != nil {
		return err
	}
	v := configVersion(data)
	cp := map[string]policyState{}
	for k, ps := range state {
		cp[k] = ps
	}
	now := time.Now()
	s.mu.Lock()
	if s.versions == nil {
		s.versions = map[string]cfgVersion{}
	}
	s.versions[v] = cfgVersion{Version: v, Policies: cp, Desc: desc}
	s.onDisk = v
	s.cfgEvents = append(s.cfgEvents, cfgEvent{At: now, Version: v, Source: "written"})
	s.mu.Unlock()
	fmt.Fprintf(s.out, "soak: +%s config %s written: %s\n", time.Since(s.began).Round(time.Millisecond), v, desc)
	return nil
}

func describe(state map[string]policyState) string {
	var parts []string
	for _, p := range soakPolicies {
		ps := state[p.Name]
		if ps.Mode == "on" {
			parts = append(parts, fmt.Sprintf("%s keep_last=%d", p.Name, ps.KeepLast))
		} else {
			parts = append(parts, p.Name+" "+ps.Mode)
		}
	}
	return strings.Join(parts, ", ")
}

// reloadLoop changes the config every 2-6 s while the phase lasts, and at random
// retags the app servers out of their policy and back. At its end it restores the
// base config and the tags, so that the settle and the checks see the start's.
func (s *soak) reloadLoop(ctx context.Context) {
	state := baseState()
	var retagged *retag
	for {
		select {
		case <-ctx.Done():
		case <-time.After(time.Duration(2000+s.intn(4000)) * time.Millisecond):
		}
		if ctx.Err() != nil {
			break
		}
		p := soakPolicies[s.intn(len(soakPolicies))]
		ps := state[p.Name]
		var what string
		switch k := s.intn(10); {
		case k < 2 && p.Name == "app":
			if retagged == nil {
				retagged = &retag{Policy: "app", From: time.Now()}
				s.retagApp(ctx, false)
				s.progress("retagged the app servers out of policy app (it selects nothing)")
			} else {
				s.retagApp(ctx, true)
				retagged.To = time.Now()
				s.mu.Lock()
				s.retags = append(s.retags, *retagged)
				s.mu.Unlock()
				retagged = nil
				s.progress("retagged the app servers back")
			}
			continue
		case ps.Mode != "on":
			ps.Mode = "on"
			what = "brought back " + p.Name
		case k < 5:
			ps.KeepLast = min(ps.KeepLast+1+s.intn(2), 5)
			what = fmt.Sprintf("raised %s keep_last", p.Name)
		case k < 8:
			ps.KeepLast = max(ps.KeepLast-1-s.intn(2), p.MinKeep)
			what = fmt.Sprintf("lowered %s keep_last", p.Name)
		case k < 9:
			ps.Mode = "disabled"
			what = "disabled " + p.Name
		default:
			ps.Mode = "absent"
			what = "removed " + p.Name
		}
		state[p.Name] = ps
		s.applyConfig(state, what)
	}
	if retagged != nil {
		s.retagApp(context.Background(), true)
		retagged.To = time.Now()
		s.mu.Lock()
		s.retags = append(s.retags, *retagged)
		s.mu.Unlock()
	}
	s.applyConfig(baseState(), "restored the base config for the settle")
}

// applyConfig writes state and, half of the time, SIGHUPs the daemon (otherwise its
// file watcher must see the change).
func (s *soak) applyConfig(state map[string]policyState, what string) {
	if err := s.writeConfig(state, what+": "+describe(state)); err != nil {
		fmt.Fprintf(s.log, "soak: write config: %v\n", err)
		return
	}
	s.mu.Lock()
	p := s.daemon
	s.mu.Unlock()
	if s.intn(2) == 0 && p != nil && !p.exited() {
		_ = p.cmd.Process.Signal(syscall.SIGHUP)
	}
	s.mu.Lock()
	s.reloads++
	s.mu.Unlock()
}

// retagApp takes the app servers out of policy app (back: puts them in again).
func (s *soak) retagApp(ctx context.Context, back bool) {
	for _, sv := range s.servers {
		if !containsStr(sv.Tags, "role=app") {
			continue
		}
		tags := sv.Tags
		if !back {
			tags = []string{"soak", "role=app-parked"}
		}
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		if err := s.sim.do(cctx, http.MethodPatch, "/servers/"+sv.ID, map[string]any{"tags": tags}, nil); err != nil {
			fmt.Fprintf(s.log, "soak: retag %s: %v\n", sv.ID, err)
		}
		cancel()
	}
}

func containsStr(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

// recordStart notes that a daemon process starts now with the file on disk.
func (s *soak) recordStart(source string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cfgEvents = append(s.cfgEvents, cfgEvent{At: time.Now(), Version: s.onDisk, Source: source})
}

// appliedTimeline merges the daemon's own record of the versions it applied
// (daemon.log: "imagekeeper daemon serving" and "config reloaded", with their
// config_version) with the soak's record of process starts and convergence
// commands (each reads the file on disk). A version written but never applied is
// not in force.
func (s *soak) appliedTimeline() ([]cfgEvent, error) {
	var out []cfgEvent
	for _, e := range s.cfgEvents {
		if e.Source != "written" {
			out = append(out, e)
		}
	}
	f, err := os.Open(filepath.Join(s.opts.Workdir, "daemon.log"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 || line[0] != '{' {
			continue
		}
		var e struct {
			Time    time.Time `json:"time"`
			Msg     string    `json:"msg"`
			Version string    `json:"config_version"`
		}
		if json.Unmarshal(line, &e) != nil || e.Version == "" {
			continue
		}
		switch e.Msg {
		case "imagekeeper daemon serving":
			out = append(out, cfgEvent{At: e.Time, Version: e.Version, Source: "daemon start"})
		case "config reloaded":
			out = append(out, cfgEvent{At: e.Time, Version: e.Version, Source: "daemon reload"})
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].At.Before(out[j].At) })
	return out, sc.Err()
}

// inForce returns the event in force at t (the last one at or before it).
func inForce(tl []cfgEvent, t time.Time) (cfgEvent, bool) {
	i := sort.Search(len(tl), func(i int) bool { return tl[i].At.After(t) })
	if i == 0 {
		return cfgEvent{}, false
	}
	return tl[i-1], true
}

// inactiveDuring reports whether policy was absent, disabled or retagged out at
// some moment of [from, to] by the applied timeline: a gap of slots there is the
// config's doing, not a lost slot.
func (s *soak) inactiveDuring(tl []cfgEvent, policy string, from, to time.Time) bool {
	for _, r := range s.retags {
		if r.Policy == policy && r.From.Before(to) && r.To.After(from) {
			return true
		}
	}
	for i, e := range tl {
		end := time.Now()
		if i+1 < len(tl) {
			end = tl[i+1].At
		}
		if !e.At.Before(to) || !end.After(from) {
			continue
		}
		if v, ok := s.versions[e.Version]; ok && v.Policies[policy].Mode != "on" {
			return true
		}
	}
	return false
}

// settleInterrupted starts the daemon once more, with no faults, when the final
// stop left slots running (a createImage stuck on an injected hang outlasts the
// drain; by design the next start settles such slots), and stops it again once none
// is running, or after Settle. Without it the soak would count as no_outcome what
// a real installation's next start finishes.
func (s *soak) settleInterrupted(ctx context.Context) {
	running := func() int {
		l, err := readLineage(ctx, s.dbPath, filepath.Join(s.opts.Workdir, "settle-copy"), true)
		if err != nil {
			return -1
		}
		n := 0
		for _, sl := range l.slots {
			if sl.Outcome == store.OutcomeRunning || sl.Outcome == "" {
				n++
			}
		}
		return n
	}
	n := running()
	if n == 0 {
		return
	}
	s.progress("%d slot(s) left running by the final stop; starting the daemon once more (no faults) to settle them", n)
	if err := s.startDaemon(); err != nil {
		s.converge = append(s.converge, fmt.Sprintf("settle start: %v", err))
		return
	}
	deadline := time.Now().Add(s.opts.Settle)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(2 * time.Second)
		if n = running(); n == 0 {
			break
		}
	}
	drained, derr := s.stopDaemon()
	s.converge = append(s.converge, fmt.Sprintf("settle start: slots still running at its stop=%d drained=%v %v", n, drained, errString(derr)))
}

// checkKeptByConfig attributes each image's first Glance DELETE to the config
// version in force at that instant and flags the deletion when that config keeps
// the image: its policy was absent or disabled then, or it was good and fewer than
// keep_last good images of its server and policy newer than it were in the cloud
// then (so keep_last alone keeps it). The count of newer images is generous (any
// row good by then and not yet deleted, hollow or not), so a flag is never the
// check's own doing; keep_within, which keeps more, is not checked.
func (s *soak) checkKeptByConfig(r *result, l *lineage, reqs []request, tl []cfgEvent) {
	firstDelete := map[string]time.Time{}
	for _, q := range reqs {
		if q.method == "DELETE" && q.op == "image.delete" {
			id := lastSeg(q.path)
			if _, ok := firstDelete[id]; !ok {
				firstDelete[id] = q.at
			}
		}
	}
	type psKey struct{ policy, server string }
	rows := map[psKey][]store.Image{}
	for _, im := range l.images {
		rows[psKey{im.Policy, im.ServerID}] = append(rows[psKey{im.Policy, im.ServerID}], im)
	}
	for _, im := range l.images {
		at, deleted := firstDelete[im.ImageID]
		if im.ImageID == "" || !deleted || at.IsZero() {
			continue
		}
		ev, ok := inForce(tl, at)
		v, known := s.versions[ev.Version]
		if !ok || !known {
			r.unattributed++
			continue
		}
		r.attributed++
		ps := v.Policies[im.Policy]
		if ps.Mode != "on" {
			r.violate(&r.keptByConfig, "kept by config: DELETE image %s (row %d, policy %s, reason %q) at %s while config %s (%s since %s) has the policy %s",
				im.ImageID, im.Row, im.Policy, im.DeleteReason, at.Format("15:04:05.000"), ev.Version, ev.Source, ev.At.Format("15:04:05.000"), ps.Mode)
			continue
		}
		if im.ActiveAt.IsZero() || im.ActiveAt.After(at) {
			continue // not good at the delete: not retention's keep_last
		}
		if strings.Contains(im.DeleteReason, "hollow") || strings.Contains(im.DeleteReason, "gone") || strings.HasPrefix(im.DeleteReason, "failed") {
			continue // hollow or gone images are not backups; failed_rule checks the rest
		}
		newer := 0
		for _, o := range rows[psKey{im.Policy, im.ServerID}] {
			if o.Row == im.Row || !o.Slot.After(im.Slot) || o.ActiveAt.IsZero() || o.ActiveAt.After(at) {
				continue
			}
			if d, gone := firstDelete[o.ImageID]; gone && !d.After(at) {
				continue
			}
			newer++
		}
		r.keepChecked++
		if m := newer - ps.KeepLast; r.keepChecked == 1 || m < r.keepMargin {
			r.keepMargin = m
		}
		if m := newer - ps.KeepLast; m == 0 {
			r.keepTight++
		}
		if newer < ps.KeepLast {
			r.violate(&r.keptByConfig, "kept by config: DELETE image %s (row %d, policy %s server %s slot %s, reason %q) at %s: config %s (%s since %s) has keep_last=%d and only %d newer good images existed",
				im.ImageID, im.Row, im.Policy, im.ServerID, im.Slot.Format("15:04:05"), im.DeleteReason, at.Format("15:04:05.000"),
				ev.Version, ev.Source, ev.At.Format("15:04:05.000"), ps.KeepLast, newer)
		}
	}
}
